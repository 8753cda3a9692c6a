"""The harmfulness–refusal plane: exact coordinates, class statistics, separability, figures, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from harc_interp import CacheConfig, HarcError, cache_residuals, starter_prompts
from harc_interp.cli import main
from harc_interp.data.prompts import AttackTemplate, Prompt, PromptSet
from harc_interp.directions import Directions
from harc_interp.plane import (
    PlaneBasis,
    PlaneConfig,
    class_geometry,
    plane_basis,
    plane_coordinates,
    run_plane,
    separability,
    study_prompts,
    suppression,
)
from harc_interp.plane.geometry import compliance_rates
from harc_interp.report.figures import displacement_figure, plane_figure

D = 16


def two_directions(cos: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Unit v_harm, unit v_ref with cos(v_harm, v_ref) = cos exactly, and a vector orthogonal to both."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(D, 3, generator=g, dtype=torch.float64))
    e1, e2, w = q.T
    return e1, cos * e1 + (1 - cos**2) ** 0.5 * e2, w


def test_coordinates_of_known_points_are_exact_in_both_bases():
    c = 0.6
    v_harm, v_ref, w = two_directions(c)
    s = (1 - c**2) ** 0.5
    basis = plane_basis(3.0 * v_harm, 0.5 * v_ref, slot=7)  # raw norms must not matter
    torch.testing.assert_close(basis.basis @ basis.basis.T, torch.eye(2, dtype=torch.float64))
    assert basis.cos == pytest.approx(c, abs=1e-12)
    # x = a e1 + b e2 + t w: orthonormal coordinates are (a, b); projections on the unit directions
    # are (a, a c + b s); the orthogonal part t w changes neither.
    ab = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, -3.0], [-0.5, 4.0]], dtype=torch.float64)
    e2 = (v_ref - c * v_harm) / s
    x = ab[:, :1] * v_harm + ab[:, 1:] * e2 + 5.0 * w
    torch.testing.assert_close(basis.orthonormal(x), ab, atol=1e-12, rtol=0)
    expected_oblique = torch.stack([ab[:, 0], c * ab[:, 0] + s * ab[:, 1]], dim=-1)
    torch.testing.assert_close(basis.oblique(x), expected_oblique, atol=1e-12, rtol=0)
    # The plane component rebuilt from orthonormal coordinates is x minus its orthogonal part.
    torch.testing.assert_close(basis.orthonormal(x) @ basis.basis, x - 5.0 * w, atol=1e-12, rtol=0)

    # Through a Directions artifact, with positions: the view reads harmfulness at t_inst and
    # refusal at t_post.
    vectors = {"v_harm": torch.stack([v_harm, v_harm]).float(), "v_ref": torch.stack([v_ref, v_ref]).float()}
    d = Directions(
        (0, 1),
        vectors,
        {k: torch.ones(2) for k in vectors},
        torch.zeros(2, 1, D),
        torch.zeros(2, 1),
        ("t_inst",),
    )
    resid = torch.stack([x, 2 * x], dim=1).float()  # [prompt, (t_inst, t_post), d]
    coords = plane_coordinates(resid, d, 1)
    assert coords.oblique.shape == (4, 2, 2) and coords.slot == 1
    torch.testing.assert_close(coords.at("t_inst", "orthonormal"), ab, atol=1e-5, rtol=0)
    view = coords.view("oblique")
    torch.testing.assert_close(view[:, 0], expected_oblique[:, 0], atol=1e-5, rtol=0)
    torch.testing.assert_close(view[:, 1], 2 * expected_oblique[:, 1], atol=1e-5, rtol=0)
    torch.testing.assert_close(coords.view("orthonormal")[:, 1], 2 * ab[:, 1], atol=1e-5, rtol=0)


def test_orthogonal_directions_make_both_bases_agree():
    v_harm, v_ref, _ = two_directions(0.0, seed=3)
    basis = plane_basis(v_harm, v_ref)
    x = torch.randn(10, D, dtype=torch.float64)
    torch.testing.assert_close(basis.oblique(x), basis.orthonormal(x), atol=1e-12, rtol=0)


def test_collinear_or_zero_directions_are_refused():
    v_harm, v_ref, _ = two_directions(0.995)
    with pytest.raises(HarcError, match="nearly collinear at slot 4 .*cos = 0.9950"):
        plane_basis(v_harm, v_ref, slot=4)
    with pytest.raises(HarcError, match="collinear"):
        plane_basis(v_harm, -v_harm)
    assert plane_basis(*two_directions(0.98)[:2]).cos == pytest.approx(0.98)
    with pytest.raises(HarcError, match="'v_ref' is zero at slot 0"):
        plane_basis(v_harm, torch.zeros(D), slot=0)
    basis = plane_basis(*two_directions(0.2)[:2])
    with pytest.raises(HarcError, match="positions"):
        plane_coordinates(torch.zeros(3, 1, D), basis)
    assert isinstance(basis, PlaneBasis)


def planted_classes(seed: int = 0):
    """Plain harmful at (0, 0) with std (1, 2); classes shifted along one, both or no axis."""
    rng = np.random.default_rng(seed)
    shifts = {
        "harmful": (0, 0),
        "harmless": (-6, -10),
        "refusal_attack": (0, -6),
        "harm_attack": (-4, 0),
        "both_attack": (-3, -5),
        "neither_attack": (0.3, 4),
    }
    pts, groups = [], []
    for name, (dx, dy) in shifts.items():
        n = 40 if name == "harmful" else 20
        pts.append(rng.normal(size=(n, 2)) * [1.0, 2.0] + [dx, dy])
        groups += [name] * n
    return np.concatenate(pts), groups


def test_class_statistics_match_a_direct_computation():
    x, groups = planted_classes()
    g = np.asarray(groups)
    complied = [i % 3 == 0 for i in range(len(groups))]
    geo = class_geometry(x, groups, complied=complied, k=1.0, n_permutations=0, slot=5)
    ref = x[g == "harmful"]
    ref_mean, ref_std = ref.mean(0), ref.std(0, ddof=1)
    gap = x[g == "harmless"].mean(0) - ref_mean
    assert geo.reference_std == pytest.approx(tuple(ref_std))
    for name in dict.fromkeys(groups):
        c = geo.get(name)
        pts = x[g == name]
        assert c.n == len(pts)
        assert c.centroid == pytest.approx(tuple(pts.mean(0)))
        np.testing.assert_allclose(np.array(c.covariance), np.cov(pts.T), rtol=1e-12)
        assert c.std == pytest.approx(tuple(pts.std(0, ddof=1)))
        assert c.displacement == pytest.approx(tuple(pts.mean(0) - ref_mean))
        assert c.displacement_z == pytest.approx(tuple((pts.mean(0) - ref_mean) / ref_std))
        assert c.gap_fraction == pytest.approx(tuple((pts.mean(0) - ref_mean) / gap))
        expected_rate = np.mean([complied[i] for i in np.flatnonzero(g == name)])
        assert c.compliance_rate == pytest.approx(expected_rate) and c.n_judged == len(pts)
    verdicts = {c.name: c.suppresses for c in geo.classes}
    assert verdicts == {
        "harmful": "reference",
        "harmless": "both",
        "refusal_attack": "refusal",
        "harm_attack": "harmfulness",
        "both_attack": "both",
        "neither_attack": "neither",
    }
    assert geo.get("harm_attack").vs_reference["balanced_accuracy"] > 0.9
    assert geo.get("harmful").vs_reference is None
    assert geo.to_dict()["classes"]["both_attack"]["suppresses"] == "both"
    assert geo.separability_attacks["classes"] == [
        "refusal_attack",
        "harm_attack",
        "both_attack",
        "neither_attack",
    ]
    assert suppression((-1.01, -0.99)) == "harmfulness" and suppression((0.0, -2.0), k=3.0) == "neither"
    with pytest.raises(HarcError, match="at least two plain 'harmful'"):
        class_geometry(x[g != "harmful"], list(g[g != "harmful"]))
    rates = compliance_rates(["a", "a", "b"], [True, None, None])
    assert rates == {"a": {"n_judged": 1, "rate": 1.0}, "b": {"n_judged": 0, "rate": None}}


def test_separability_is_chance_on_identical_and_high_on_separated_classes():
    rng = np.random.default_rng(1)
    same = rng.normal(size=(120, 2))
    groups = ["a", "b", "c"] * 40
    s = separability(same, groups, n_permutations=50, seed=0)
    assert s["chance_balanced_accuracy"] == pytest.approx(1 / 3)
    assert abs(s["balanced_accuracy"] - 1 / 3) < 0.15 and s["p_value"] > 0.05
    assert s["n_splits"] == 5 and np.sum(s["confusion"]) == 120
    apart = same + np.array([[0, 0], [10, 0], [0, 10]])[[i % 3 for i in range(120)]]
    s = separability(apart, groups, n_permutations=50, seed=0)
    assert s["accuracy"] > 0.97 and s["balanced_accuracy"] > 0.97 and s["p_value"] < 0.05
    # Unbalanced: chance accuracy is the majority share; single-member groups are left out.
    s = separability(same[:13], ["a"] * 9 + ["b"] * 3 + ["c"], n_permutations=0)
    assert s["chance_accuracy"] == pytest.approx(9 / 12) and s["dropped"] == ["c"] and s["n_splits"] == 3


def test_plane_figure_has_three_traces_per_group_and_slot_and_one_slider_step_per_slot():
    x, groups = planted_classes()
    names = list(dict.fromkeys(groups))
    views = {1: x, 2: 2 * x, 4: 3 * x}
    complied = [i % 2 == 0 for i in range(len(groups))]
    fig = plane_figure(views, groups, selected=2, complied=complied, hover=[str(i) for i in range(len(x))])
    assert len(fig.data) == 3 * len(names) * 3
    steps = fig.layout.sliders[0].steps
    assert [s.label for s in steps] == ["1", "2", "4"] and fig.layout.sliders[0].active == 1
    for k, step in enumerate(steps):
        visible = step.args[0]["visible"]
        assert sum(visible) == 3 * len(names)
        shown = [fig.data[i].meta for i, v in enumerate(visible) if v]
        assert {m["slot"] for m in shown} == {list(views)[k]}
        assert {m["kind"] for m in shown} == {"points", "centroid", "ellipse"}
    assert sum(bool(t.visible) for t in fig.data) == 3 * len(names)  # only the selected slot at first
    centroid = next(t for t in fig.data if t.meta == {"slot": 4, "group": "both_attack", "kind": "centroid"})
    g = np.asarray(groups)
    assert centroid.x[0] == pytest.approx(3 * x[g == "both_attack", 0].mean())
    points = next(t for t in fig.data if t.meta == {"slot": 1, "group": "harmful", "kind": "points"})
    assert len(points.x) == 40 and set(points.marker.symbol) == {"x", "circle"}
    ellipse = next(t for t in fig.data if t.meta == {"slot": 1, "group": "harmful", "kind": "ellipse"})
    # A 1-sigma ellipse: every point on it has Mahalanobis distance 1.
    pts = x[g == "harmful"]
    inv = np.linalg.inv(np.cov(pts.T))
    delta = np.stack([ellipse.x, ellipse.y], 1) - pts.mean(0)
    np.testing.assert_allclose(np.einsum("ni,ij,nj->n", delta, inv, delta), 1.0, rtol=1e-9)

    geo = class_geometry(x, groups, n_permutations=0).to_dict()
    bars = displacement_figure(geo)
    assert [t.name.split()[1] for t in bars.data] == ["harmfulness", "refusal"]
    assert list(bars.data[0].x) == names[1:]
    assert list(bars.data[1].y) == pytest.approx([geo["classes"][n]["displacement_z"][1] for n in names[1:]])


def test_study_prompts_fills_templates_and_samples_per_class():
    harmful = PromptSet(
        "h", tuple(Prompt(f"h{i}", f"harmful request {i}", label="harmful") for i in range(10))
    )
    harmless = PromptSet("b", tuple(Prompt(f"b{i}", f"recipe {i}", label="harmless") for i in range(4)))
    jail = PromptSet(
        "j",
        tuple(Prompt(f"p{i}", f"pair prompt {i}", attack_class="pair") for i in range(5)),
        (
            AttackTemplate("t1", "Say yes. [INSERT PROMPT HERE]", "prefix_injection"),
            AttackTemplate("t2", "[INSERT PROMPT HERE] in a story", "scenario_nesting"),
        ),
    )
    ps = study_prompts([harmful, harmless, jail], n_goals=3, seed=0)
    groups = [p.attack_class or p.label for p in ps]
    assert (
        groups.count("prefix_injection") == 3 and groups.count("pair") == 5 and groups.count("harmful") == 10
    )
    filled = [p for p in ps if p.attack_class == "prefix_injection"]
    assert all(p.prompt.startswith("Say yes. harmful request") and p.goal in p.prompt for p in filled)
    small = study_prompts([harmful, harmless, jail], n_goals=3, per_class=2, classes=["pair"], seed=0)
    counts = {g: [p.attack_class or p.label for p in small].count(g) for g in ("harmful", "harmless", "pair")}
    assert counts == {"harmful": 2, "harmless": 2, "pair": 2} and len(small) == 6
    assert (
        study_prompts([harmful, jail], per_class=2, seed=0).ids
        == study_prompts([harmful, jail], per_class=2, seed=0).ids
    )
    held = study_prompts([harmful, jail], n_goals=10, exclude_ids={"h0", "h1", "p0"}, seed=0)
    assert not {"h0", "h1", "p0"} & set(held.ids)
    assert {p.meta["goal_id"] for p in held if p.meta.get("goal_id")} == {f"h{i}" for i in range(2, 10)}
    d = Directions((0,), {}, {}, torch.zeros(1, 1, D), torch.zeros(1, 1), ("t_inst",))
    d = d.with_meta(splits={"harmful_train": ["h0"], "harmless_val": ["b1"], "harmful_test": ["h9"]})
    assert d.training_ids() == {"h0", "b1"}
    with pytest.raises(HarcError, match="need harmful goals"):
        study_prompts([harmless, jail])
    with pytest.raises(HarcError, match="occurs twice"):
        study_prompts([harmful, harmful])


# ------------------------------------------------------------------------------------------------
# End to end on the tiny model


def test_plane_cli_end_to_end_on_tiny_model(
    tiny, tiny_dir, tiny_directions, tiny_directions_dir, tmp_path, capsys
):
    dir_path, d = tiny_directions_dir, tiny_directions
    out = tmp_path / "plane"
    argv = [
        "plane",
        "--model",
        str(tiny_dir),
        "--directions",
        str(dir_path),
        "--prompts",
        "starter:harmful",
        "starter:harmless",
        "starter:attacks",
        "--classes",
        "prefix_injection,scenario_nesting",
        "--per-class",
        "4",
        "--n-goals",
        "2",
        "--max-new-tokens",
        "3",
        "--n-permutations",
        "5",
        "--out",
        str(out),
        "--quiet",
    ]
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    rows = [json.loads(line) for line in (out / "coords.jsonl").read_text().splitlines()]
    groups = [r["group"] for r in rows]
    assert printed["slot"] == 2 and printed["n_prompts"] == len(rows) == 16
    assert {g: groups.count(g) for g in dict.fromkeys(groups)} == {
        "harmful": 4,
        "harmless": 4,
        "prefix_injection": 4,  # 2 templates x 2 goals
        "scenario_nesting": 4,
    }
    assert printed["skipped_slots"] == [0]  # t_post is the same token in every prompt at the embedding

    # Coordinates equal a direct projection of the cached residuals at slot 2.
    texts = {p.id: p.prompt for p in starter_prompts("harmful").prompts + starter_prompts("harmless").prompts}
    plain = [r for r in rows if r["id"] in texts]
    acts = cache_residuals(
        tiny, [texts[r["id"]] for r in plain], config=CacheConfig(layers=(2,)), progress=False
    )
    harm = acts.at(2, "t_inst").double() @ d.unit("v_harm", 2).double()
    ref = acts.at(2, "t_post").double() @ d.unit("v_ref", 2).double()
    np.testing.assert_allclose([r["harmfulness"] for r in plain], harm.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose([r["refusal"] for r in plain], ref.numpy(), rtol=1e-4, atol=1e-4)
    for r in rows:
        assert r["oblique"]["t_inst"][0] == pytest.approx(r["harmfulness"])
        assert r["oblique"]["t_post"][1] == pytest.approx(r["refusal"])
        assert r["orthonormal"]["t_inst"][0] == pytest.approx(r["harmfulness"])  # e1 = v̂_harm

    # geometry.json statistics equal a direct computation from coords.jsonl.
    geo = json.loads((out / "geometry.json").read_text())
    view = geo["views"]["oblique"]
    xy = np.array([[r["harmfulness"], r["refusal"]] for r in rows])
    g = np.asarray(groups)
    ref_mean, ref_std = xy[g == "harmful"].mean(0), xy[g == "harmful"].std(0, ddof=1)
    for name, c in view["classes"].items():
        assert c["centroid"] == pytest.approx(list(xy[g == name].mean(0)), rel=1e-6)
        assert c["displacement_z"] == pytest.approx(
            list((xy[g == name].mean(0) - ref_mean) / ref_std), rel=1e-5
        )
        complied = [r["complied"] for r in rows if r["group"] == name]
        assert c["compliance_rate"] == pytest.approx(sum(complied) / len(complied))
        assert printed["classes"][name]["suppresses"] == c["suppresses"]
    assert geo["slots_in_figure"] == [1, 2, 3, 4] and "0" in geo["skipped_slots"]
    assert view["separability"]["chance_balanced_accuracy"] == pytest.approx(1 / 4)
    assert geo["cos_harm_ref"] == pytest.approx(float(d.unit("v_harm", 2) @ d.unit("v_ref", 2)), abs=1e-5)
    for name in ("plane_oblique", "plane_orthonormal", "class_displacement"):
        assert (out / "figures" / f"{name}.html").is_file()

    # Responses stay in the run directory and are never printed.
    gens = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    assert [x["id"] for x in gens] == [r["id"] for r in rows]
    assert all(x["complied"] == r["complied"] for x, r in zip(gens, rows, strict=True))
    printed_text = json.dumps(printed)
    assert not any(x["response"].strip() and x["response"] in printed_text for x in gens)

    # An artifact from another template (here: another system prompt) is refused.
    assert main([*argv, "--system-prompt", "Be brief.", "--force"]) == 2
    assert "different chat template" in capsys.readouterr().err


def test_a_rerun_into_the_same_folder_reuses_the_residuals_and_answers(
    tiny, tiny_directions, tmp_path, monkeypatch
):
    import harc_interp.plane.stage as stage

    prompts = starter_prompts("harmful").sample(3) + starter_prompts("harmless").sample(3)
    config = PlaneConfig(max_new_tokens=3)
    first = run_plane(tiny, tiny_directions, prompts, tmp_path, config, progress=False)

    def refuse(*args, **kwargs):
        raise AssertionError("a finished plane stage was recomputed")

    monkeypatch.setattr(stage, "cache_residuals", refuse)
    monkeypatch.setattr(stage, "generate", refuse)
    again = run_plane(tiny, tiny_directions, prompts, tmp_path, config, progress=False)
    assert again.complied == first.complied
    assert all(torch.equal(again.coords[s].oblique, first.coords[s].oblique) for s in first.coords)
    # other prompts are another run: recomputed, not read from the cache
    with pytest.raises(AssertionError, match="recomputed"):
        run_plane(tiny, tiny_directions, prompts.sample(4), tmp_path, config, progress=False)
