"""The directions stage end to end on the tiny model (a stand-in judge: a random model never refuses)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from harc_interp import HarcError, PromptSet, score_prompts, starter_prompts
from harc_interp.directions import Directions
from harc_interp.directions.selection import Candidate, relaxed_pick
from harc_interp.directions.stage import DirectionsConfig, extract_directions, split_three
from harc_interp.report import write_directions_figures


def toy_judge(response: str) -> bool:
    """Stand-in for the phrase judge on a random model: calls every response with an even length a refusal."""
    return len(response) % 2 == 0


def test_extract_directions_on_tiny_model(tiny, tmp_path):
    cfg = DirectionsConfig(
        n_train=10,
        n_val=4,
        n_test=6,
        max_new_tokens=6,
        n_response=4,
        n_bootstrap=10,
        eval_max_new_tokens=4,
        selection_slots=(1, 2),
        batch_size=8,
    )
    harmful, harmless = starter_prompts("harmful"), starter_prompts("harmless")
    refusal_tokens = tiny.tokenizer("I As", add_special_tokens=False)["input_ids"]
    d = extract_directions(
        tiny, harmful, harmless, tmp_path, cfg, judge=toy_judge, refusal_tokens=refusal_tokens, progress=False
    )
    assert set(d.vectors) == {"v_harm", "v_ref", "v_harm_resp", "v_ref_resp"}
    assert d.vectors["v_harm"].shape == (tiny.n_layers + 1, tiny.d_model)
    meta = json.loads((tmp_path / "directions.json").read_text())
    assert meta["selected_layer"] == d.selected_layer
    assert len(meta["metrics"]["probes"]["t_inst"]["projection"]) == tiny.n_layers + 1
    sel = meta["selection"]
    assert [c["slot"] for c in sel["arditi"]["candidates"]] == [1, 2]
    # A random model's induce score stays below 0: the thresholds are relaxed, Arditi's slots kept.
    relaxed = relaxed_pick([Candidate(**c) for c in sel["arditi"]["candidates"]])
    assert sel["arditi_filters_relaxed"] == (sel["arditi"]["best"] is None)
    assert sel["method"] == "arditi" and d.selected_layer in (1, 2)
    if sel["arditi_filters_relaxed"]:
        assert d.selected_layer == relaxed.slot
    assert (
        meta["selection"]["refusal_position"] == "t_post"
        and "v_ref_position" not in meta["causal_validation"]
    )
    cv = meta["causal_validation"]
    assert set(cv) >= {"v_ref", "v_harm", "harmful_refusal_rate"}
    doses = cv["v_ref"]["addition_dose_response"]
    assert [x["coefficient"] for x in doses] == [1.0, 2.0]
    assert doses[0]["harmless_refusal_rate_added"] == cv["v_ref"]["harmless_refusal_rate_added"]
    responses = json.loads((tmp_path / "work" / f"causal_slot{d.selected_layer}_responses.json").read_text())
    assert (
        len(responses["harmless_v_ref_added_x2"]) == cfg.n_test
    )  # kept in the run folder, not in the artifact
    assert "harmless_v_ref_added_x2" not in (tmp_path / "directions.json").read_text()
    assert not set(meta["splits"]["harmful_test"]) & set(meta["splits"]["harmful_train"])
    write_directions_figures(d, tmp_path)
    for name in ("auroc_by_layer", "cosine_by_layer", "selection"):
        assert (tmp_path / "figures" / f"{name}.html").is_file()
    loaded = Directions.load(tmp_path, model=tiny)
    assert loaded.selected_layer == d.selected_layer
    assert loaded.selection == d.selection and loaded.training_ids() == d.training_ids()

    # The fitted probes are saved: scoring the held-out test prompts with them from the loaded artifact
    # reproduces the held-out probe AUROC the stage reported, at every slot and both positions.
    assert loaded.probes.positions == ("t_inst", "t_post") and loaded.probes.layers == d.layers
    held_out = [
        replace(p, label=label)
        for label, ps in (("harmful", harmful), ("harmless", harmless))
        for p in ps.prompts
        if p.id in meta["splits"][f"{label}_test"]
    ]
    labelled = PromptSet("test", tuple(held_out))
    for position in ("t_inst", "t_post"):
        scores = score_prompts(tiny, loaded, labelled, position=position, progress=False)
        reported = [m["auroc"] for m in meta["metrics"]["probes"][position]["probe"]]
        assert scores.auroc()["probe"] == pytest.approx(reported, abs=1e-9)
        assert scores.auroc()["projection"] != scores.auroc()["probe"]

    # A rerun reuses every step; other settings in the same folder are refused.
    again = extract_directions(
        tiny, harmful, harmless, tmp_path, cfg, judge=toy_judge, refusal_tokens=refusal_tokens, progress=False
    )
    assert again.meta["selection"] == d.meta["selection"]
    with pytest.raises(HarcError, match="other settings"):
        extract_directions(
            tiny,
            harmful,
            harmless,
            tmp_path,
            DirectionsConfig(n_train=12, n_val=4, n_test=6),
            judge=toy_judge,
            progress=False,
        )


def test_splits_are_disjoint_and_checked():
    ps = starter_prompts("harmful")
    train, val, test = split_three(ps, 20, 8, 12, seed=0)
    assert len(test) == 12 and len(val) == 8 and len(train) == 20
    assert not (set(train.ids) & set(test.ids)) and not (set(val.ids) & set(test.ids))
    with pytest.raises(HarcError, match="need at least"):
        split_three(ps, 10, 30, 30, seed=0)
