"""`harc train` (subspace), `harc eval` and `harc verify` end to end on the tiny model, and the splits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harc_interp import starter_prompts
from harc_interp.cli import main
from harc_interp.data.prompts import safety_splits


def test_safety_splits_share_no_goal():
    train, ev = safety_splits(
        starter_prompts("harmful"),
        starter_prompts("harmless"),
        starter_prompts("borderline"),
        starter_prompts("attacks"),
        max_per_class=6,
        seed=0,
    )
    assert not set(train["harmful"].ids) & set(ev["harmful"].ids)
    assert {p.goal for p in train["jailbreak"]} <= set(train["harmful"].texts)
    assert {p.goal for p in ev["jailbreaks"]} <= set(ev["harmful"].texts)
    classes = {p.attack_class for p in ev["jailbreaks"]}
    assert len(classes) >= 8 and all(sum(p.attack_class == c for p in ev["jailbreaks"]) <= 6 for c in classes)
    again = safety_splits(
        starter_prompts("harmful"),
        starter_prompts("harmless"),
        starter_prompts("borderline"),
        starter_prompts("attacks"),
        max_per_class=6,
        seed=0,
    )
    assert again[1]["jailbreaks"].ids == ev["jailbreaks"].ids
    # max_eval caps the held-out plain sets (the attacks then use the capped goals); training is unchanged.
    sets = [starter_prompts(k) for k in ("harmful", "harmless", "borderline", "attacks")]
    capped_train, capped = safety_splits(*sets, max_per_class=6, seed=0, max_eval=5)
    assert {k: len(v) for k, v in capped.items() if k != "jailbreaks"} == {
        "harmful": 5,
        "harmless": 5,
        "borderline": 5,
    }
    assert set(capped["harmful"].ids) <= set(ev["harmful"].ids)
    assert {p.goal for p in capped["jailbreaks"]} <= set(capped["harmful"].texts)
    assert {k: v.ids for k, v in capped_train.items()} == {k: v.ids for k, v in train.items()}


def test_train_eval_verify_cli(tiny_dir, tiny_directions_dir, tmp_path, capsys, monkeypatch):
    import harc_interp.coupling.subspace as subspace_mod

    seen = set()  # every prompt training (and so the margin calibration) reads goes through these two

    def spying(real):
        def spy(model, d, slots, sets, *args, **kwargs):
            seen.update(i for ps in sets.values() for i in ps.ids)
            return real(model, d, slots, sets, *args, **kwargs)

        return spy

    for name in ("plane_coordinates_dataset", "response_coordinates_dataset"):
        monkeypatch.setattr(subspace_mod, name, spying(getattr(subspace_mod, name)))
    real_rates, answered = subspace_mod.refusal_rates, set()

    def spying_rates(model, variant, rows, **kwargs):  # the calibration's validation answers
        answered.update(i for ps in rows.values() for i in ps.ids)
        return real_rates(model, variant, rows, **kwargs)

    monkeypatch.setattr(subspace_mod, "refusal_rates", spying_rates)
    d_dir = tiny_directions_dir
    common = ["--model", str(tiny_dir), "--directions", str(d_dir), "--max-per-class", "2", "--quiet"]
    # The span-reading map (default) also reading slot 1, with plain-harmful margins of their own; eval
    # and verify below run it through generation and the residual comparison.
    train = ["--steps", "20", "--read-slots", "1", "--plain-margin", "0.6", "--plain-response-margin", "0"]
    assert main(["train", *common, "--out", str(tmp_path / "coupling"), *train]) == 0
    capsys.readouterr()
    splits = json.loads((tmp_path / "coupling" / "splits.json").read_text())
    assert set(splits["eval"]) == {"harmful", "harmless", "borderline", "jailbreaks"}
    saved = json.loads((tmp_path / "coupling" / "coupling.json").read_text())
    assert saved["config"]["span_context"] and saved["read_slots"] == [1]
    assert saved["config"]["plain_margin"] == 0.6 and saved["config"]["plain_response_margin"] == 0.0
    # No --margin: calibrated on validation rows of the training prompts, never on the eval split.
    assert saved["config"]["margin"] is None and saved["margin"]["2"] in saved["config"]["margin_grid"]
    cal = saved["calibration"]["2"]
    tried = [c["margin"] for c in cal["candidates"]]
    grid = sorted(saved["config"]["margin_grid"])
    assert (
        tried[0] == grid[len(grid) // 2] and len(tried) == len(set(tried)) <= 3
    )  # bisection from the middle
    # the kept margin is the calibration rule's pick from the recorded candidates (most validation
    # jailbreaks refused among those within the safe budgets; the smallest tried when none is)
    from harc_interp.coupling.subspace import pick_margin

    assert (saved["margin"]["2"], cal["met"]) == pick_margin(cal["candidates"])
    assert cal["met"] or saved["margin"]["2"] == min(tried)
    assert seen and seen == {i for ids in splits["train"].values() for i in ids}
    assert not seen & {i for ids in splits["eval"].values() for i in ids}
    # The validation answers come from the training split's held-out rows, never the eval split.
    assert answered and answered <= seen

    assert (
        main(
            [
                "eval",
                *common,
                "--intervention",
                str(tmp_path / "coupling"),
                "--max-new-tokens",
                "3",
                "--out",
                str(tmp_path / "eval"),
            ]
        )
        == 0
    )
    result = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert 0 <= result["mean_asr"] <= 1 and result["white_box_asr"]["attack_slot"] == 2
    assert len(result["asr_by_class"]) >= 8 and result["harmless_kl"] >= 0
    assert result["harmless_response_kl"] >= 0 and 0 <= result["harmless_refusal"] <= 1
    # Every judged response is kept in the run folder (for auditing the judge), none in eval.json.
    responses = json.loads((tmp_path / "eval" / "responses.json").read_text())
    assert len(responses["jailbreaks"]) == result["n"]["jailbreaks"]
    assert len(responses["harmful_v_ref_ablated_upstream"]) == result["n"]["harmful"]
    asr = 1 - sum(r["refusal"] for r in responses["harmful"]) / len(responses["harmful"])
    assert asr == result["plain_harmful_asr"]
    summary = (tmp_path / "eval" / "eval.json").read_text()
    texts = [r["response"] for rows in responses.values() for r in rows if len(r["response"]) >= 8]
    assert texts and not any(t in summary for t in texts)
    # A rerun of the same evaluation reads every finished group back from eval/groups: nothing is answered.
    import harc_interp.evaluation.safety as safety_mod

    answer = safety_mod.respond
    monkeypatch.setattr(safety_mod, "respond", lambda *a, **k: pytest.fail("answered again"))
    again = ["eval", *common, "--intervention", str(tmp_path / "coupling"), "--max-new-tokens", "3"]
    assert main([*again, "--out", str(tmp_path / "eval")]) == 0
    assert json.loads((tmp_path / "eval" / "eval.json").read_text())["mean_asr"] == result["mean_asr"]
    monkeypatch.setattr(safety_mod, "respond", answer)

    # The in-plane push bound: the plain model with c · v_ref added where a coupling would edit.
    push = [*common, "--max-new-tokens", "2", "--push-ref", "2"]
    assert main(["eval", *push, "--out", str(tmp_path / "push")]) == 0
    pushed = json.loads((tmp_path / "push" / "eval.json").read_text())
    assert pushed["push_ref"] == {"coefficient": 2.0, "slot": 2} and pushed["harmless_kl"] > 0
    intervention = ["--intervention", str(tmp_path / "coupling")]
    assert main(["eval", *push, *intervention, "--out", str(tmp_path / "both")]) == 2
    assert "drop --intervention" in capsys.readouterr().err

    assert (
        main(
            [
                "verify",
                "--model",
                str(tiny_dir),
                "--directions",
                str(d_dir),
                "--intervention",
                str(tmp_path / "coupling"),
                "--limit",
                "3",
                "--out",
                str(tmp_path / "verify"),
                "--quiet",
            ]
        )
        == 0
    )
    report = json.loads((tmp_path / "verify" / "verify.json").read_text())
    assert report["intervened_slots"] == [2] and report["confined_at_intervened"]

    # One-token maps (--no-span-context) run through the same commands.
    one_token = str(tmp_path / "one_token")
    assert (
        main(
            [
                "train",
                *common,
                "--out",
                one_token,
                "--steps",
                "5",
                "--no-span-context",
                "--response-tokens",
                "2",
                "--safe-raise-weight",
                "2",
            ]
        )
        == 0
    )
    assert json.loads(Path(one_token, "coupling.json").read_text())["config"]["safe_raise_weight"] == 2.0
    # Sampled over-refusal: 3 seeded samples per borderline prompt, judged and kept like the greedy ones.
    assert (
        main(
            [
                "eval",
                *common,
                "--intervention",
                one_token,
                "--max-new-tokens",
                "2",
                "--samples",
                "3",
                "--humaneval",
                "2",
                "--out",
                one_token + "/eval",
            ]
        )
        == 0
    )
    sampled = json.loads(Path(one_token, "eval", "eval.json").read_text())
    rows = json.loads(Path(one_token, "eval", "responses.json").read_text())["borderline_sampled"]
    assert sampled["samples"] == 3 and len(rows) == 3 * sampled["n"]["borderline"]
    # HumanEval of both sides on the first two problems, every answer and verdict kept
    for side in ("base", "tuned"):
        he = sampled["humaneval"][side]
        kept = json.loads(Path(one_token, "eval", f"humaneval_{side}.json").read_text())
        assert he["n"] == 2 and [r["task_id"] for r in kept] == ["HumanEval/0", "HumanEval/1"]
        assert he["passed"] == sum(r["status"] == "passed" for r in kept)
    assert sampled["over_refusal_sampled"] == sum(r["refusal"] for r in rows) / len(rows)
    # Really sampled: some prompt's three responses are not all the greedy one.
    greedy = {
        r["id"]: r["response"]
        for r in json.loads(Path(one_token, "eval", "responses.json").read_text())["borderline"]
    }
    assert any(r["response"] != greedy[r["id"]] for r in rows)
    capsys.readouterr()
    bad = ["eval", *common, "--intervention", one_token, "--samples", "-1", "--out", one_token + "/bad"]
    assert main(bad) == 2 and "samples must be" in capsys.readouterr().err
    assert (
        main(
            [
                "verify",
                *common[:4],
                "--intervention",
                one_token,
                "--limit",
                "2",
                "--out",
                one_token + "/v",
                "--quiet",
            ]
        )
        == 0
    )
    assert json.loads((tmp_path / "one_token" / "v" / "verify.json").read_text())["confined_at_intervened"]


def test_heldout_and_classes_select_the_safety_sets(tiny_directions):
    from harc_interp import starter_prompts
    from harc_interp.cli import build_parser
    from harc_interp.cli.intervention_verbs import safety_sets

    harmful_ids = starter_prompts("harmful").ids
    used = {
        "harmful_train": harmful_ids[:5],
        "harmful_val": harmful_ids[5:7],
        "harmful_test": harmful_ids[7:9],
    }
    d = tiny_directions.with_meta(splits=used)
    first_class = starter_prompts("attacks").templates[0].attack_class
    args = build_parser().parse_args(["eval", "--directions", "x", "--out", "y", "--heldout"])
    train, ev = safety_sets(args, d)
    seen = {p.id for s in (*train.values(), *ev.values()) for p in s.prompts}
    assert not seen & set(harmful_ids[:7])  # directions' train and val prompts are gone
    assert set(harmful_ids[7:9]) <= seen  # their test prompts stay
    assert {p.goal for p in ev["jailbreaks"] if p.goal} <= set(ev["harmful"].texts)

    args = build_parser().parse_args(["eval", "--directions", "x", "--out", "y", "--classes", first_class])
    _, ev = safety_sets(args, d)
    assert {p.attack_class for p in ev["jailbreaks"]} == {first_class}


def test_subspace_flags_are_refused_in_lora_mode_before_loading_anything(capsys):
    from harc_interp.cli import main

    argv = ["train", "--directions", "no-such-dir", "--mode", "lora", "--out", "x", "--margin", "1.5"]
    assert main([*argv, "--position-maps"]) == 2
    err = capsys.readouterr().err
    assert "--margin, --position-maps only apply to --mode subspace" in err
    assert "no-such-dir" not in err  # refused before the directions or the model are read
