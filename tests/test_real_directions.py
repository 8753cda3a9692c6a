"""Directions, selection, causal checks and the confined coupling on the real offline model (small run)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from harc_interp import load_prompts, starter_prompts
from harc_interp.coupling import CouplingIntervention
from harc_interp.directions import Directions
from harc_interp.directions.stage import DirectionsConfig, extract_directions
from harc_interp.evaluation.verify import confinement_report
from harc_interp.model.edits import Variant

pytestmark = pytest.mark.slow
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def dev_sets():
    if (SHARED / "harmful_dev.jsonl").is_file():
        harmful = load_prompts(SHARED / "harmful_dev.jsonl")
        return harmful, load_prompts(SHARED / "harmless_dev.jsonl").exclude(source="jbb")
    return starter_prompts("harmful"), starter_prompts("harmless")


@pytest.fixture(scope="module")
def real_directions(real, tmp_path_factory):
    harmful, harmless = dev_sets()
    cfg = DirectionsConfig(
        n_train=24,
        n_val=8,
        n_test=12,
        max_new_tokens=16,
        n_response=16,
        n_bootstrap=50,
        eval_max_new_tokens=16,
        selection_slots=(6, 10, 12, 14),
    )
    out = tmp_path_factory.mktemp("real-directions")
    extract_directions(real, harmful, harmless, out, cfg, progress=False)
    return Directions.load(out, model=real)


def test_directions_separate_harm_and_drive_refusal(real, real_directions):
    d = real_directions
    m = d.meta
    assert m["refusal_token_strings"][0] in {"I", "As"}  # found from the model's own refusals
    assert m["metrics"]["best_harm_layer"]["auroc"] >= 0.9
    cv = m["causal_validation"]
    # Ablating the refusal direction lowers refusals of harmful prompts; adding it induces refusals.
    assert cv["v_ref"]["harmful_refusal_rate_ablated"] < cv["harmful_refusal_rate"]
    assert cv["v_ref"]["harmless_refusal_rate_added"] > cv["harmless_refusal_rate"]
    assert [x["coefficient"] for x in cv["v_ref"]["addition_dose_response"]] == [1.0, 2.0]
    assert d.vectors["v_harm"].shape == (real.n_layers + 1, real.d_model)
    cos = m["metrics"]["cos_harm_ref"]
    assert all(
        lo <= c + 1e-6 <= hi + 2e-6
        for lo, c, hi in zip(cos["ci_low"], cos["cos"], cos["ci_high"], strict=True)
    )


def test_selection_through_the_sweep_equals_the_full_forward_on_the_real_model(real, real_directions):
    """The shared-prefix / resumed selection scores what the full forward from the embeddings scores:
    same pick, every score within 1e-5 (two slots, the run's validation prompts)."""
    from harc_interp import formatter_for
    from harc_interp.directions.selection import arditi_select

    d = real_directions
    harmful, harmless = dev_sets()
    by_id = {p.id: p.prompt for p in (harmful + harmless).prompts}
    fmt = formatter_for(real)
    val_h, val_b = (
        fmt.format_many([by_id[i] for i in d.splits[f"{c}_val"]]) for c in ("harmful", "harmless")
    )
    runs = [
        arditi_select(real, d, val_h, val_b, d.refusal_tokens, slots=(6, 12), reuse=reuse, progress=False)
        for reuse in (True, False)
    ]
    (best, cands, base), (ref_best, ref_cands, ref_base) = runs
    assert getattr(best, "slot", None) == getattr(ref_best, "slot", None)
    assert base == pytest.approx(ref_base, abs=1e-5)
    scored = [(a, b) for a, b in zip(cands, ref_cands, strict=True) if a.induce_score == a.induce_score]
    assert len(scored) == 2
    for a, b in scored:
        for f in ("bypass_score", "induce_score", "kl"):
            assert getattr(a, f) == pytest.approx(getattr(b, f), abs=1e-5), (a.slot, f)


def test_confined_coupling_on_the_real_model(real, real_directions):
    d = real_directions
    slot = d.selected_layer
    coupling = CouplingIntervention.from_directions(d, (slot,), torch.zeros(1, 2), torch.ones(1, 2) * 10)
    with torch.no_grad():
        coupling.maps[0].b_out.fill_(1.0)  # a non-trivial map
    prompts = {
        "harmful": starter_prompts("harmful").sample(3, seed=0),
        "harmless": starter_prompts("harmless").sample(3, seed=0),
    }
    report = confinement_report(
        real,
        d,
        prompts,
        tuned=Variant(coupling.hooks(real)),
        intervened_slots=(slot,),
        n_null=50,
        progress=False,
    )
    assert report["confined_at_intervened"], report["max_rel_out_of_plane_at_intervened"]
    at = [r for r in report["sets"]["harmful"] if r["slot"] == slot]
    assert all(r["rel_change"] > 0 and r["in_plane_energy_fraction"] > 0.999999 for r in at)
    downstream = [r for r in report["sets"]["harmful"] if r["slot"] > slot]
    assert any(r["rel_out_of_plane"] > 1e-4 for r in downstream)  # the model spreads it: reported, not hidden


def test_subspace_training_on_the_real_model(real, real_directions, tmp_path):
    """The README recipe (span read at an earlier slot too, plain harmful prompts' own margins, a cost on
    any rise of a safe prompt's refusal) on the package's starter prompts: the trained map must lift the
    attacked prompts' refusal read-out and leave the safe prompts' where it was."""
    from harc_interp.coupling.loop import TrainConfig
    from harc_interp.coupling.subspace import SubspaceConfig, train_subspace
    from harc_interp.data.prompts import safety_splits

    d = real_directions
    slot = d.selected_layer
    sets, _ = safety_splits(
        *(starter_prompts(k) for k in ("harmful", "harmless", "borderline", "attacks")),
        eval_fraction=0.5,
        max_per_class=3,
    )
    cfg = SubspaceConfig(
        read_slots=(slot // 2,),
        margin=1.5,
        plain_margin=0.8,
        plain_response_margin=0.0,
        safe_raise_weight=3.0,
        response_tokens=4,
        train=TrainConfig(steps=400, lr=1e-2, checkpoint_every=400, log_every=100),
    )
    coupling = train_subspace(real, d, sets, tmp_path, cfg, progress=False)
    objective = coupling.meta["objective"][str(slot)]
    assert objective["trained"]["total"] < 0.5 * objective["at_init"]["total"]
    read = objective["trained"]["refusal_readouts"]  # t_post refusal read-out [before, after], in gaps
    for attacked in ("jailbreak", "harmful_ablate_ref"):
        before, after = read[attacked]["t_post"]
        assert after > max(before, 0) + 0.5, (attacked, before, after)
    for safe in ("harmless", "borderline"):
        before, after = read[safe]["t_post"]
        assert after < before + 0.1, (safe, before, after)
        assert read[safe]["t_post_movement"] < 1.0


def test_plane_on_the_real_model(real, real_directions, tmp_path):
    from harc_interp.plane import PlaneConfig, run_plane, study_prompts
    from harc_interp.report import write_plane_figures

    attacks = starter_prompts("attacks")
    classes = ["prefix_injection", "refusal_suppression"]
    study = study_prompts(
        [
            starter_prompts("harmful").sample(6, seed=3),
            starter_prompts("harmless").sample(6, seed=3),
            attacks,
        ],
        n_goals=3,
        classes=classes,
    )
    result = run_plane(
        real,
        real_directions,
        study,
        tmp_path,
        PlaneConfig(max_new_tokens=12, n_permutations=10),
        progress=False,
    )
    geo = result.geometry["oblique"]
    harmful, harmless = geo.get("harmful"), geo.get("harmless")
    assert (
        harmful.centroid[0] > harmless.centroid[0]
    )  # harmfulness axis separates plain harmful from harmless
    assert harmful.centroid[1] > harmless.centroid[1]  # and so does the refusal axis
    assert {c.name for c in geo.classes} >= {"harmful", "harmless", *classes}
    write_plane_figures(result, tmp_path, real_directions)
    assert (tmp_path / "coords.jsonl").is_file() and (tmp_path / "figures" / "plane_oblique.html").is_file()


def test_a_small_comparison_on_the_real_model(real, real_directions, tmp_path):
    """`compare` with two inference-time baselines beside base on a few held-out prompts: ActAdd's
    coefficient is chosen on training rows by its rule and steers towards refusal; Self-Reminder answers
    under its own system prompt; the rows' responses stay in the run folder."""
    from harc_interp.baselines import SteeringCalibration
    from harc_interp.data.prompts import safety_splits
    from harc_interp.evaluation.compare import CompareConfig, compare_methods
    from harc_interp.evaluation.safety import EvalConfig

    sets = [starter_prompts(k) for k in ("harmful", "harmless", "borderline", "attacks")]
    train, held_out = safety_splits(*sets, max_per_class=1)
    held_out = {k: v.sample(min(4, len(v)), seed=0) for k, v in held_out.items()}
    config = CompareConfig(
        methods=("base", "actadd", "self_reminder"),
        eval=EvalConfig(max_new_tokens=12, batch_size=16, samples=0),
        calibration=SteeringCalibration(coefficients=(0.5, 2.0), max_per_group=3, max_new_tokens=12),
        throughput_prompts=2,
        throughput_tokens=4,
    )
    result = compare_methods(real, real_directions, train, held_out, tmp_path, config, progress=False)
    base, actadd, reminder = result["methods"]
    assert (base["method"], actadd["method"], reminder["method"]) == ("base", "actadd", "self_reminder")
    assert base["harmless_kl"] == pytest.approx(0, abs=1e-6) and reminder["harmless_kl"] > 0
    cal = json.loads((tmp_path / "methods" / "actadd" / "result.json").read_text())["result"]["calibration"]
    assert set(cal["n_validation"]) >= {"harmless", "borderline"}
    assert cal["coefficient"] in (0.5, 2.0)
    if cal["rule_met"]:
        chosen = next(c for c in cal["candidates"] if c["coefficient"] == cal["coefficient"])
        assert chosen["safe_rise"] <= 0.05
    # adding the refusal direction does not make the model comply with more plain harmful requests
    assert actadd["plain_harmful_asr"] <= base["plain_harmful_asr"]
    assert all(0 <= r["mean_asr"] <= 1 and r["throughput_vs_base"] > 0 for r in result["methods"])
    assert (tmp_path / "methods" / "self_reminder" / "responses.json").is_file()
