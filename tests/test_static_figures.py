"""Static figures (PNG, SVG) for papers: matplotlib draws what the plotly figure shows when there is no
Chrome for kaleido, and kaleido exports where there is one; the report links both copies."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import pytest

from harc_interp.report import static
from harc_interp.report.figures import (
    displacement_figure,
    plane_figure,
    selection_figure,
    trajectory_figure,
    write_figure,
)
from harc_interp.report.html import _figure


def _plane(n_slots: int = 3):
    rng = np.random.default_rng(0)
    groups = ["harmful"] * 6 + ["harmless"] * 6 + ["jailbreak"] * 6
    views = {s: rng.normal(size=(18, 2)) + s for s in range(n_slots)}
    complied = [i % 3 == 0 for i in range(18)]
    return plane_figure(views, groups, selected=1, complied=complied), views


def _check_files(paths):
    png, svg = paths
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<svg" in svg.read_text()[:2000]


def test_matplotlib_draws_only_the_active_slider_step(monkeypatch, tmp_path):
    monkeypatch.setattr(static, "_RENDERER", "matplotlib")
    fig, views = _plane()
    mfig = static.to_matplotlib(fig)
    ax = mfig.axes[0]
    # The active slot's points and centroids: the x data of what was drawn is slot 1's, not 0's or 2's.
    drawn = np.concatenate([c.get_offsets() for c in ax.collections])
    want = np.concatenate([views[1], views[1].reshape(3, 6, 2).mean(1)])
    assert sorted(map(tuple, drawn.round(6))) == sorted(map(tuple, want.round(6)))
    assert len(ax.lines) == 3  # one 1σ ellipse per group
    assert ax.get_xlabel().startswith("harmfulness") and "layer slot 1" in mfig._suptitle.get_text()
    _check_files(static.write_static(fig, tmp_path / "plane"))


def test_matplotlib_draws_bars_reference_lines_overlays_and_panels(monkeypatch, tmp_path):
    monkeypatch.setattr(static, "_RENDERER", "matplotlib")
    geometry = {
        "reference": "harmful",
        "k": 1.0,
        "kind": "oblique",
        "slot": 4,
        "classes": {
            n: {
                "name": n,
                "n": 5,
                "suppresses": n == "a",
                "compliance_rate": 0.2,
                "displacement_z": [0.5, -1.5],
            }
            for n in ("harmful", "a", "b")
        },
    }
    disp = static.to_matplotlib(displacement_figure(geometry))
    ax = disp.axes[0]
    assert len(ax.patches) == 4  # two classes × two axes, grouped
    assert any(np.allclose(line.get_ydata(), -1.0) for line in ax.lines)  # the −kσ threshold
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b"]

    candidates = [
        {"slot": s, "position": "t_post", "bypass_score": -s, "induce_score": s / 2} for s in range(4)
    ]
    sel = static.to_matplotlib(selection_figure(candidates, [0.1, 0.2, None, 0.4], [0, 1, 2, 3]))
    assert len(sel.axes) == 2 and len(sel.axes[1].patches) == 4  # the HARC score on its own right axis

    rows = [{"group": g, "tokens": {"oblique": np.ones((5, 2)).tolist()}} for g in ("x", "y")]
    traj = static.to_matplotlib(trajectory_figure(rows, threshold=0.5))
    assert len(traj.axes) == 2 and traj.axes[0].get_title() == "projection on v̂_harm_resp"
    _check_files(static.write_static(trajectory_figure(rows), tmp_path / "traj"))


def test_kaleido_exports_where_a_chrome_is_installed(monkeypatch, tmp_path):
    if not static._kaleido_works():
        pytest.skip("no Chrome/Chromium for kaleido on this machine (matplotlib draws the figures)")
    monkeypatch.setattr(static, "_RENDERER", "kaleido")
    _check_files(static.write_static(go.Figure(go.Scatter(x=[0, 1], y=[1, 0])), tmp_path / "line"))


def test_write_figure_writes_html_png_svg_and_the_report_links_them(monkeypatch, tmp_path):
    monkeypatch.setattr(static, "_RENDERER", "matplotlib")
    fig, _ = _plane(2)
    paths = write_figure(fig, tmp_path / "figures" / "plane")
    assert [p.suffix for p in paths] == [".html", ".png", ".svg"]
    block = _figure(tmp_path, paths[0], "The plane")
    assert 'href="figures/plane.png"' in block and 'href="figures/plane.svg"' in block
    assert write_figure(fig, tmp_path / "other", static=False) == [tmp_path / "other.html"]


def _comparison(humaneval: bool = False) -> dict:
    """A hand-made comparison.json: harc and actadd on the front, base and smoothllm behind it."""
    rows = {
        "base": (0.8, 0.30, 0.0, 0.56),
        "harc": (0.2, 0.25, 0.05, 0.52),
        "actadd": (0.1, 0.60, 0.4, 0.40),
        "smoothllm": (0.5, 0.40, 0.1, 0.30),
    }
    return {
        "methods": [
            {
                "method": name,
                "mean_asr": asr,
                "over_refusal": refusal + 0.1,
                "over_refusal_sampled": refusal,
                "harmless_kl": kl,
                "humaneval_pass_at_1": he if humaneval else None,
            }
            for name, (asr, refusal, kl, he) in rows.items()
        ]
    }


def test_pareto_front_keeps_the_points_nothing_beats():
    from harc_interp.report.figures import pareto_front

    points = [(0.8, 0.3), (0.2, 0.25), (0.1, 0.6), (0.5, 0.4), (0.2, 0.25), (0.2, 0.5), (0.9, 0.1)]
    # (0.5, 0.4) and (0.8, 0.3) are beaten by (0.2, 0.25); (0.2, 0.5) ties on x but is higher; ties are kept
    assert pareto_front(points) == [2, 1, 4, 6]
    assert pareto_front([(0.3, 0.3)]) == [0] and pareto_front([]) == []


def test_tradeoff_figure_highlights_harc_draws_the_front_and_writes_png_svg(monkeypatch, tmp_path):
    from harc_interp.report.figures import tradeoff_figure, write_tradeoff_figure

    fig = tradeoff_figure(_comparison())
    methods = [t for t in fig.data if t.meta["kind"] == "method"]
    assert [t.meta["method"] for t in methods] == ["base", "harc", "actadd", "smoothllm"]
    harc = next(t for t in methods if t.meta["highlight"])
    assert harc.meta["method"] == "harc" and harc.marker.symbol == "star" and harc.marker.line.width == 2
    assert not any(t.meta["highlight"] for t in methods if t is not harc)
    assert (harc.x[0], harc.y[0]) == (0.2, 0.25)  # sampled over-refusal when every method has it
    front = next(t for t in fig.data if t.meta["kind"] == "front")
    assert front.meta["methods"] == ["actadd", "harc"]
    assert (list(front.x), list(front.y)) == ([0.1, 0.2, 0.2, 0.8], [0.6, 0.6, 0.25, 0.25])  # steps
    assert "exp(−harmless KL)" in fig.layout.title.text
    # capability is HumanEval when present: the larger pass@1, the larger the marker
    he = tradeoff_figure(_comparison(humaneval=True))
    sizes = {t.meta["method"]: t.marker.size for t in he.data if t.meta["kind"] == "method"}
    assert sizes["base"] > sizes["harc"] > sizes["actadd"] > sizes["smoothllm"]
    assert "HumanEval pass@1" in he.layout.title.text
    # greedy over-refusal when a method lacks sampled answers
    greedy = _comparison()
    greedy["methods"][0]["over_refusal_sampled"] = None
    g = tradeoff_figure(greedy)
    assert g.layout.yaxis.title.text == "over-refusal (greedy)" and g.data[1].y[0] == 0.35

    monkeypatch.setattr(static, "_RENDERER", "matplotlib")
    mfig = static.to_matplotlib(fig)
    labels = mfig.axes[0].get_legend_handles_labels()[1]
    assert "harc (0.95)" in labels and "Pareto front" in labels
    paths = write_tradeoff_figure(_comparison(), tmp_path)
    assert [p.name for p in paths] == ["tradeoff.html", "tradeoff.png", "tradeoff.svg"]
    _check_files(paths[1:])


def test_pareto_staircase_steps_between_front_points_and_runs_to_the_axes_ends():
    from harc_interp.report.figures import pareto_staircase

    assert pareto_staircase([(0.0, 0.125)], 0.5, 0.375) == ([0.0, 0.0, 0.5], [0.375, 0.125, 0.125])
    assert pareto_staircase([], 1.0, 1.0) == ([], [])
