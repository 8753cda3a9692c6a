"""Plotly figure builders: each returns a `go.Figure`; writing files is `write_figure`'s job."""

from __future__ import annotations

from pathlib import Path

import plotly.graph_objects as go


def write_figure(fig: go.Figure, path_stem: str | Path, static: bool = True) -> list[Path]:
    """Write `stem.html` (plotly.js stored once beside it, so it opens offline) and, with `static`, the
    same figure as `stem.png` and `stem.svg` for papers (`static.write_static`: kaleido where a Chrome
    is present, else matplotlib)."""
    from .static import write_static

    stem = Path(path_stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    html = stem.with_suffix(".html")
    fig.write_html(html, include_plotlyjs="directory")
    return [html, *(write_static(fig, stem) if static else [])]


def metric_curves_figure(
    metrics: dict, title: str = "Held-out separability of harmful vs harmless"
) -> go.Figure:
    """AUROC per layer slot: projection on the direction and a logistic probe, at t_inst and t_post."""
    fig = go.Figure()
    layers = metrics["layers"]
    for pos in metrics["probes"]:
        for kind, dash in (("projection", "solid"), ("probe", "dot")):
            fig.add_trace(
                go.Scatter(
                    x=layers,
                    y=[m["auroc"] for m in metrics["probes"][pos][kind]],
                    name=f"{pos} · {kind}",
                    mode="lines+markers",
                    line={"dash": dash},
                )
            )
    fig.update_layout(
        title=title,
        xaxis_title="layer slot (block input; last = final output)",
        yaxis_title="held-out AUROC",
        yaxis_range=[0.4, 1.02],
        template="plotly_white",
    )
    return fig


def cosine_figure(metrics: dict, title: str = "cos(v_harm, v_ref) per layer, bootstrap 95% CI") -> go.Figure:
    """cos(v_harm, v_ref) per layer slot with its bootstrap 95% band."""
    layers = metrics["layers"]
    c = metrics["cos_harm_ref"]
    fig = go.Figure(
        [
            go.Scatter(
                x=layers + layers[::-1],
                y=c["ci_high"] + c["ci_low"][::-1],
                fill="toself",
                name="95% CI",
                line={"width": 0},
                fillcolor="rgba(99,110,250,0.2)",
                hoverinfo="skip",
            ),
            go.Scatter(
                x=layers,
                y=c["cos"],
                name="cos(v_harm, v_ref)",
                mode="lines+markers",
                line={"color": "#636efa"},
            ),
        ]
    )
    for name, ys in metrics.get("other_cosines", {}).items():
        fig.add_trace(go.Scatter(x=layers, y=ys, name=name, mode="lines", line={"dash": "dash"}))
    fig.update_layout(title=title, xaxis_title="layer slot", yaxis_title="cosine", template="plotly_white")
    return fig


def selection_figure(candidates: list[dict], harc_scores: list | None, layers: list[int]) -> go.Figure:
    """Bypass and induce scores of the refusal-direction candidates, and the HARC layer score."""
    fig = go.Figure()
    for pos in sorted({c["position"] for c in candidates}):
        rows = [c for c in candidates if c["position"] == pos]
        fig.add_trace(
            go.Scatter(
                x=[c["slot"] for c in rows],
                y=[c["bypass_score"] for c in rows],
                name=f"bypass score ({pos})",
                mode="lines+markers",
            )
        )
        fig.add_trace(
            go.Scatter(
                x=[c["slot"] for c in rows],
                y=[c["induce_score"] for c in rows],
                name=f"induce score ({pos})",
                mode="lines+markers",
                line={"dash": "dot"},
            )
        )
    if harc_scores is not None:
        fig.add_trace(
            go.Bar(
                x=layers,
                y=[s if s is not None else 0 for s in harc_scores],
                name="HARC layer score",
                yaxis="y2",
                opacity=0.3,
            )
        )
        fig.update_layout(yaxis2={"overlaying": "y", "side": "right", "title": "HARC layer score"})
    fig.update_layout(
        title="Direction selection",
        xaxis_title="layer slot",
        yaxis_title="refusal score",
        template="plotly_white",
    )
    return fig


# ------------------------------------------------------------------------------------------------
# The harmfulness–refusal plane and response trajectories

_FIXED_COLOURS = {"harmful": "#d62728", "harmless": "#2ca02c", "borderline": "#7f7f7f", "safe": "#7f7f7f"}
_PALETTE = (
    "#1f77b4", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#393b79",
    "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd", "#e6550d", "#31a354", "#756bb1",
)  # fmt: skip


def group_colours(groups) -> dict[str, str]:
    """A stable colour per group: plain harmful red, harmless green, attack classes from a palette."""
    names = list(dict.fromkeys(groups))
    others = [g for g in names if g not in _FIXED_COLOURS]
    return {g: _FIXED_COLOURS.get(g) or _PALETTE[others.index(g) % len(_PALETTE)] for g in names}


def covariance_ellipse(points, n_sigma: float = 1.0, n: int = 64):
    """The n-sigma ellipse of 2-D points (x and y arrays, closed); empty for fewer than 3 points."""
    import numpy as np

    pts = np.asarray(points, dtype=float)
    if len(pts) < 3:
        return [], []
    centre = pts.mean(0)
    vals, vecs = np.linalg.eigh(np.cov(pts, rowvar=False))
    t = np.linspace(0, 2 * np.pi, n)
    circle = np.stack([np.cos(t), np.sin(t)])
    xy = centre[:, None] + vecs @ (n_sigma * np.sqrt(np.clip(vals, 0, None))[:, None] * circle)
    return xy[0].tolist(), xy[1].tolist()


def _group_traces(sub, idx, name: str, colour: str, slot: int, complied, hover) -> list[go.Scatter]:
    """One group's three traces at one slot: its points (crosses where it complied), centroid, 1σ ellipse."""
    symbols = ["x" if complied is not None and complied[i] else "circle" for i in idx]
    text = [
        f"{hover[i] if hover is not None else i}<br>{name}"
        + ("" if complied is None or complied[i] is None else f"<br>complied: {complied[i]}")
        for i in idx
    ]
    centre = sub.mean(0)
    ex, ey = covariance_ellipse(sub)
    return [
        go.Scatter(
            x=sub[:, 0],
            y=sub[:, 1],
            mode="markers",
            name=f"{name} (n={len(idx)})",
            legendgroup=name,
            marker={"color": colour, "size": 7, "opacity": 0.7, "symbol": symbols},
            text=text,
            hoverinfo="text+x+y",
            meta={"slot": slot, "group": name, "kind": "points"},
        ),
        go.Scatter(
            x=[centre[0]],
            y=[centre[1]],
            mode="markers",
            name=f"{name} centroid",
            legendgroup=name,
            showlegend=False,
            marker={"color": colour, "size": 15, "symbol": "star", "line": {"width": 1, "color": "black"}},
            hoverinfo="name+x+y",
            meta={"slot": slot, "group": name, "kind": "centroid"},
        ),
        go.Scatter(
            x=ex,
            y=ey,
            mode="lines",
            name=f"{name} 1σ",
            legendgroup=name,
            showlegend=False,
            line={"color": colour, "width": 1.5},
            hoverinfo="skip",
            meta={"slot": slot, "group": name, "kind": "ellipse"},
        ),
    ]


def plane_figure(
    views: dict,
    groups,
    *,
    selected: int | None = None,
    complied=None,
    hover=None,
    axis_titles: tuple[str, str] = ("harmfulness: h(t_inst)·v̂_harm", "refusal: h(t_post)·v̂_ref"),
    title: str = "Harmfulness–refusal plane",
) -> go.Figure:
    """Scatter of prompts in the plane, coloured by group, with centroids and 1-sigma ellipses, and a
    layer slider. `views[slot]` is an `[n, 2]` array of plane-view coordinates; every slot gets three
    traces per group (points, centroid, ellipse), shown only at its slider step. Complied prompts
    (`complied[i]` true) are drawn as crosses."""
    import numpy as np

    groups = list(groups)
    names = list(dict.fromkeys(groups))
    colours = group_colours(names)
    g = np.asarray(groups)
    slots = list(views)
    if not slots:
        raise ValueError("no layer slots to plot")
    active = slots.index(selected) if selected in slots else len(slots) // 2
    fig = go.Figure()
    for k, slot in enumerate(slots):
        pts = np.asarray(views[slot], dtype=float)
        for name in names:
            idx = np.flatnonzero(g == name)
            for trace in _group_traces(pts[idx], idx, name, colours[name], slot, complied, hover):
                fig.add_trace(trace.update(visible=k == active))
    per_slot = 3 * len(names)
    steps = []
    for k, slot in enumerate(slots):
        visible = [False] * (per_slot * len(slots))
        visible[k * per_slot : (k + 1) * per_slot] = [True] * per_slot
        steps.append(
            {
                "method": "update",
                "label": str(slot),
                "args": [
                    {"visible": visible},
                    {
                        "title.text": f"{title} · layer slot {slot}",
                        "xaxis.autorange": True,
                        "yaxis.autorange": True,
                    },
                ],
            }
        )
    fig.update_layout(
        title=f"{title} · layer slot {slots[active]}",
        xaxis_title=axis_titles[0],
        yaxis_title=axis_titles[1],
        template="plotly_white",
        sliders=[{"active": active, "currentvalue": {"prefix": "layer slot: "}, "steps": steps}],
        legend={"title": {"text": "group (× = complied)"}},
    )
    return fig


def displacement_figure(geometry: dict, title: str | None = None) -> go.Figure:
    """Per class: centroid displacement from plain harmful along each axis, in plain-harmful standard
    deviations, with the suppression threshold −k; hover shows the compliance rate and the verdict.
    `geometry` is a `PlaneGeometry.to_dict()` (as stored in geometry.json under views)."""
    classes = [c for c in geometry["classes"].values() if c["name"] != geometry["reference"]]
    names = [c["name"] for c in classes]
    hover = [
        f"{c['name']} (n={c['n']})<br>suppresses: {c['suppresses']}<br>compliance: "
        + ("n/a" if c["compliance_rate"] is None else f"{c['compliance_rate']:.2f}")
        for c in classes
    ]
    fig = go.Figure()
    for axis, label, colour in ((0, "harmfulness", "#d62728"), (1, "refusal", "#1f77b4")):
        fig.add_trace(
            go.Bar(
                x=names,
                y=[c["displacement_z"][axis] for c in classes],
                name=f"Δ {label} (σ of plain harmful)",
                marker_color=colour,
                hovertext=hover,
            )
        )
    fig.add_hline(
        y=-geometry["k"],
        line_dash="dash",
        line_color="black",
        annotation_text=f"suppressed below −{geometry['k']}σ",
    )
    fig.update_layout(
        title=title
        or f"Class displacement from plain harmful ({geometry['kind']} axes, slot {geometry['slot']})",
        barmode="group",
        xaxis_title="group",
        yaxis_title="centroid displacement / plain-harmful std",
        template="plotly_white",
    )
    return fig


def trajectory_figure(
    rows: list[dict],
    *,
    threshold: float | None = None,
    n_tokens: int | None = None,
    individual: bool = True,
    title: str = "Response tokens on the response-side directions",
) -> go.Figure:
    """Per-token projections of responses on v̂_harm_resp (top) and v̂_ref_resp (bottom) over token
    index: one mean line per group per panel, plus a faint line per prompt when `individual`.
    `rows` are trajectories.jsonl rows (`group`, `tokens.oblique` = [[harm, ref], ...])."""
    import numpy as np
    from plotly.subplots import make_subplots

    groups = list(dict.fromkeys(r["group"] for r in rows))
    colours = group_colours(groups)
    fig = make_subplots(
        rows=2,
        cols=1,
        shared_xaxes=True,
        subplot_titles=("projection on v̂_harm_resp", "projection on v̂_ref_resp"),
        vertical_spacing=0.08,
    )
    for axis in (0, 1):
        for name in groups:
            series = [
                np.asarray(r["tokens"]["oblique"], dtype=float).reshape(-1, 2)[:, axis]
                for r in rows
                if r["group"] == name
            ]
            if n_tokens is not None:
                series = [s[:n_tokens] for s in series]
            if individual:
                for s in series:
                    fig.add_trace(
                        go.Scatter(
                            x=list(range(len(s))),
                            y=s,
                            mode="lines",
                            line={"color": colours[name], "width": 0.7},
                            opacity=0.25,
                            legendgroup=name,
                            showlegend=False,
                            hoverinfo="skip",
                            meta={"group": name, "kind": "prompt", "axis": axis},
                        ),
                        row=axis + 1,
                        col=1,
                    )
            width = max((len(s) for s in series), default=0)
            mean = [
                float(np.mean([s[t] for s in series if len(s) > t])) for t in range(width)
            ]  # over the prompts still generating
            fig.add_trace(
                go.Scatter(
                    x=list(range(width)),
                    y=mean,
                    mode="lines",
                    name=f"{name} (n={len(series)})",
                    line={"color": colours[name], "width": 2.5},
                    legendgroup=name,
                    showlegend=axis == 0,
                    meta={"group": name, "kind": "mean", "axis": axis},
                ),
                row=axis + 1,
                col=1,
            )
    if threshold is not None:
        fig.add_hline(
            y=threshold,
            line_dash="dash",
            line_color="black",
            annotation_text="response threshold (score)",
            row=1,
            col=1,
        )
    fig.update_xaxes(title_text="response token index", row=2, col=1)
    fig.update_layout(title=title, template="plotly_white", height=700)
    return fig


# ------------------------------------------------------------------------------------------------
# Each stage's figures, from its artifact or result


def write_directions_figures(d, out_dir: str | Path) -> list[Path]:
    """AUROC and cosine curves per layer and the selection scores of a Directions artifact, under
    `out_dir/figures/`."""
    figures = Path(out_dir) / "figures"
    sel = d.selection
    return [
        *write_figure(metric_curves_figure(d.metrics), figures / "auroc_by_layer"),
        *write_figure(cosine_figure(d.metrics), figures / "cosine_by_layer"),
        *write_figure(
            selection_figure(sel.arditi["candidates"], sel.harc_scores, list(d.layers)), figures / "selection"
        ),
    ]


def plane_figures(result) -> dict[str, go.Figure]:
    """The plane scatter with a layer slider (oblique and orthonormal axes) and the class-displacement
    bars of a `PlaneResult`, keyed by file stem."""
    from ..plane.basis import AXIS_TITLES, BASES

    hover = [p.id for p in result.prompts.prompts]
    figures = {}
    for kind in BASES:
        figures[f"plane_{kind}"] = plane_figure(
            {s: c.view(kind).numpy() for s, c in sorted(result.coords.items())},
            result.groups,
            selected=result.slot,
            complied=result.complied,
            hover=hover,
            axis_titles=AXIS_TITLES[kind],
            title=f"Harmfulness–refusal plane ({kind} axes), {result.meta['model']}",
        )
    figures["class_displacement"] = displacement_figure(result.geometry["oblique"].to_dict())
    return figures


def write_plane_figures(result, out_dir: str | Path, directions=None) -> list[Path]:
    """The plane figures, and the directions' cosine and AUROC curves when the artifact has metrics,
    under `out_dir/figures/`."""
    figures = plane_figures(result)
    metrics = directions.metrics if directions is not None else {}
    if "cos_harm_ref" in metrics:
        figures["cosine_by_layer"] = cosine_figure(metrics)
    if "probes" in metrics:
        figures["auroc_by_layer"] = metric_curves_figure(metrics)
    return [p for stem, fig in figures.items() for p in write_figure(fig, Path(out_dir) / "figures" / stem)]


def write_trajectory_figures(result, out_dir: str | Path, model_name: str) -> list[Path]:
    """The response trajectories of a `TrajectoryResult`, under `out_dir/figures/`."""
    fig = trajectory_figure(
        list(result.rows),
        threshold=result.summary["thresholds"]["response_score"],
        n_tokens=None,
        title=f"Response tokens on the response-side directions, {model_name}, slot {result.slot}",
    )
    return write_figure(fig, Path(out_dir) / "figures" / "trajectories")


# ------------------------------------------------------------------------------------------------
# `harc compare`: attack success against over-refusal


def pareto_front(points) -> list[int]:
    """Indices of the points no other point beats (lower is better on both coordinates: at most as high
    on each and lower on one), in increasing order of the first coordinate. Equal points are all kept."""
    pts = [(float(x), float(y)) for x, y in points]
    front = [
        i for i, (x, y) in enumerate(pts) if not any(a <= x and b <= y and (a < x or b < y) for a, b in pts)
    ]
    return sorted(front, key=lambda i: pts[i])


def pareto_staircase(front, x_max: float, y_max: float) -> tuple[list[float], list[float]]:
    """The boundary of what the `front` points (x increasing) beat, as x and y lists: down from `y_max`
    at the first point, a step at each next one, then across to `x_max`. Steps rather than straight
    segments: a point between two front methods is no method's result."""
    if not front:
        return [], []
    corners = [(front[0][0], y_max)]
    for (x, y), prev in zip(front, [None, *front[:-1]], strict=True):
        corners += [(x, prev[1]), (x, y)] if prev else [(x, y)]
    corners.append((x_max, front[-1][1]))
    kept = [c for k, c in enumerate(corners) if k == 0 or c != corners[k - 1]]
    return [x for x, _ in kept], [y for _, y in kept]


def tradeoff_axes(comparison: dict) -> dict:
    """What the trade-off figure plots for each method of a comparison.json dict: `x` mean attack
    success over the attack classes, `y` over-refusal (sampled when every method has it, else greedy),
    `capability` (HumanEval pass@1 when every method has it, else exp(−harmless KL): 1 for the plain
    model, lower the further its next-token distribution moves), and the names of the two choices."""
    import math

    rows = [r for r in comparison["methods"] if r.get("mean_asr") is not None]
    sampled = all(r.get("over_refusal_sampled") is not None for r in rows)
    humaneval = all(r.get("humaneval_pass_at_1") is not None for r in rows)
    return {
        "methods": [r["method"] for r in rows],
        "x": [r["mean_asr"] for r in rows],
        "y": [r["over_refusal_sampled"] if sampled else r["over_refusal"] for r in rows],
        "capability": [
            r["humaneval_pass_at_1"] if humaneval else math.exp(-(r.get("harmless_kl") or 0.0)) for r in rows
        ],
        "over_refusal": "sampled" if sampled else "greedy",
        "capability_name": "HumanEval pass@1" if humaneval else "exp(−harmless KL)",
    }


def tradeoff_figure(comparison: dict, title: str = "Attack success vs over-refusal") -> go.Figure:
    """One marker per method of a comparison.json dict: mean attack success (x) against over-refusal
    (y), marker size growing with capability (`tradeoff_axes` says which measure), the Pareto front as a
    dashed staircase (lower-left is better on both axes) and HARC as a red outlined star. One trace per
    method, so the legend names each (with its capability) in the static copies too."""
    ax = tradeoff_axes(comparison)
    points = list(zip(ax["x"], ax["y"], strict=True))
    front = pareto_front(points)
    colours = iter(_PALETTE)
    fig = go.Figure()
    for i, name in enumerate(ax["methods"]):
        harc = name == "harc"
        cap = ax["capability"][i]
        colour = "#d62728" if harc else "#7f7f7f" if name == "base" else next(colours)
        fig.add_trace(
            go.Scatter(
                x=[ax["x"][i]],
                y=[ax["y"][i]],
                mode="markers+text",
                text=[name],
                textposition="top center",
                name=f"{name} ({cap:.2f})",
                marker={
                    "color": colour,
                    "size": 8 + 24 * max(cap, 0.0),
                    "symbol": "star" if harc else "circle",
                    "opacity": 1.0 if harc else 0.75,
                    "line": {"width": 2 if harc else 0.5, "color": "black"},
                },
                hovertemplate=f"{name}<br>attack success %{{x:.3f}}<br>over-refusal %{{y:.3f}}<br>"
                f"{ax['capability_name']} {cap:.3f}<extra></extra>",
                meta={"kind": "method", "method": name, "highlight": harc, "pareto": i in front},
            )
        )
    stair_x, stair_y = pareto_staircase(
        [points[i] for i in front], max(x for x, _ in points), max(y for _, y in points)
    )
    fig.add_trace(
        go.Scatter(
            x=stair_x,
            y=stair_y,
            mode="lines",
            name="Pareto front",
            line={"color": "black", "dash": "dash", "width": 1.5},
            hoverinfo="skip",
            meta={"kind": "front", "methods": [ax["methods"][i] for i in front]},
        )
    )
    fig.update_layout(
        title=f"{title}<br>marker size: {ax['capability_name']} (values in the legend); dashed: Pareto "
        "front; lower-left is better",
        xaxis_title="attack success rate (mean over attack classes)",
        yaxis_title=f"over-refusal ({ax['over_refusal']})",
        legend={"title": {"text": f"method ({ax['capability_name']})"}},
        template="plotly_white",
    )
    return fig


def write_tradeoff_figure(comparison: dict, out_dir: str | Path) -> list[Path]:
    """`out_dir/tradeoff.html`, `.png` and `.svg` of a comparison.json dict."""
    return write_figure(tradeoff_figure(comparison), Path(out_dir) / "tradeoff")
