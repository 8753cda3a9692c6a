"""`compare_methods` on the tiny model: every method judged on the same held-out split, a table row
each, and a rerun after a finished method resumes without redoing it."""

from __future__ import annotations

import json

import pytest

from harc_interp import HarcError
from harc_interp.baselines import SteeringCalibration
from harc_interp.data.prompts import safety_splits, starter_prompts
from harc_interp.evaluation import compare as compare_mod
from harc_interp.evaluation.compare import CompareConfig, compare_methods
from harc_interp.evaluation.safety import EvalConfig


def test_compare_writes_one_row_per_method_and_resumes_finished_methods(
    tiny, tiny_directions, tmp_path, monkeypatch
):
    sets = [starter_prompts(k) for k in ("harmful", "harmless", "borderline", "attacks")]
    train, held_out = safety_splits(*sets, max_per_class=2)
    held_out = {k: v.sample(min(4, len(v))) for k, v in held_out.items()}
    config = CompareConfig(
        methods=("base", "actadd", "self_reminder"),
        eval=EvalConfig(max_new_tokens=3, batch_size=8),
        calibration=SteeringCalibration(coefficients=(0.5, 1.0), max_per_group=3, max_new_tokens=3),
        throughput_prompts=2,
        throughput_tokens=3,
    )
    result = compare_methods(tiny, tiny_directions, train, held_out, tmp_path, config, progress=False)
    assert [r["method"] for r in result["methods"]] == ["base", "actadd", "self_reminder"]
    assert result["methods"][0]["throughput_vs_base"] == 1.0
    actadd = json.loads((tmp_path / "methods" / "actadd" / "result.json").read_text())["result"]
    assert actadd["calibration"]["coefficient"] in (0.5, 1.0)
    assert "| actadd |" in (tmp_path / "comparison.md").read_text()
    # a rerun sets up and evaluates nothing again
    monkeypatch.setattr(compare_mod, "_prepare", lambda *a, **k: pytest.fail("a finished method was redone"))
    monkeypatch.setattr(compare_mod, "evaluate_safety", lambda *a, **k: pytest.fail("evaluated again"))
    again = compare_methods(tiny, tiny_directions, train, held_out, tmp_path, config, progress=False)
    assert [r["mean_asr"] for r in again["methods"]] == [r["mean_asr"] for r in result["methods"]]
    # HumanEval asked for afterwards reopens each finished method from its record (ActAdd with its
    # calibrated coefficient) and measures only what is missing
    opened = []
    real_open = compare_mod._open
    monkeypatch.setattr(
        compare_mod, "_open", lambda name, record, *a: opened.append(record) or real_open(name, record, *a)
    )
    with_he = CompareConfig(**{**config.__dict__, "humaneval": 1})
    he = compare_methods(tiny, tiny_directions, train, held_out, tmp_path, with_he, progress=False)
    assert [r["humaneval_pass_at_1"] for r in he["methods"]] == [0.0, 0.0, 0.0]  # a random model's code
    assert [r["mean_asr"] for r in he["methods"]] == [r["mean_asr"] for r in result["methods"]]
    assert opened[1]["calibration"]["coefficient"] == actadd["calibration"]["coefficient"]
    assert (tmp_path / "methods" / "actadd" / "humaneval_result.json").is_file()


def test_compare_names_the_methods_it_knows():
    with pytest.raises(HarcError, match="unknown methods.*harc_lora"):
        CompareConfig(methods=("base", "lorax"))


def test_harc_compare_runs_from_the_command_line(tiny_dir, tiny_directions_dir, tmp_path, capsys):
    from harc_interp.cli import main

    common = ["--model", str(tiny_dir), "--directions", str(tiny_directions_dir), "--max-per-class", "2"]
    args = [*common, "--quiet", "--max-new-tokens", "2", "--samples", "0", "--out"]
    assert main(["compare", *args, str(tmp_path / "c"), "--methods", "base,smoothllm"]) == 0
    md = (tmp_path / "c" / "comparison.md").read_text()
    assert "| smoothllm |" in md and "[PNG](tradeoff.png)" in md and "[SVG](tradeoff.svg)" in md
    assert all((tmp_path / "c" / f"tradeoff.{ext}").is_file() for ext in ("html", "png", "svg"))
    responses = json.loads((tmp_path / "c" / "methods" / "smoothllm" / "responses.json").read_text())
    assert all("refused_share" in row for row in responses["harmful"])
    capsys.readouterr()
    assert main(["compare", *args, str(tmp_path / "d"), "--methods", "base,lorax"]) == 2
    assert "unknown methods ['lorax']" in capsys.readouterr().err


def test_the_paper_preset_sets_what_it_says_and_flags_override_it():
    from harc_interp.cli import build_parser
    from harc_interp.cli.intervention_verbs import compare_configs
    from harc_interp.evaluation.compare import PRESETS

    parse = build_parser().parse_args
    common = ["compare", "--directions", "d", "--out", "o"]
    plain, cap = compare_configs(parse(common))
    assert (
        plain == CompareConfig(eval=EvalConfig(samples=4), calibration=SteeringCalibration()) and cap is None
    )  # no preset: the config's defaults and SplitConfig's cap
    paper, cap = compare_configs(parse([*common, "--preset", "paper", "--system-prompt", "Be brief."]))
    want = PRESETS["paper"].config
    assert paper.eval.max_new_tokens == 512 and paper.eval.samples == 8 and paper.eval.batch_size == 64
    assert paper.humaneval == 164 and paper.smoothllm.n_copies == 10 and cap == 64
    assert paper.calibration.max_per_group == 64 and paper.calibration.max_new_tokens == 64
    assert paper.methods == want.methods and paper.throughput_tokens == 128
    assert (paper.training.r, paper.training.alpha, paper.training.train.steps) == (32, 64, 400)
    assert paper.training.train.lr == 1e-4 and paper.training.train.grad_accumulation == 2
    assert paper.adaptive is None  # an adaptive attack only when asked for
    assert paper.eval.system_prompt == paper.calibration.system_prompt == "Be brief."
    flags = ["--max-new-tokens", "32", "--samples", "0", "--batch-size", "8", "--humaneval", "0"]
    over, cap = compare_configs(
        parse([*common, "--preset", "paper", *flags, "--max-per-class", "3", "--methods", "base,harc"])
    )
    assert (over.eval.max_new_tokens, over.eval.samples, over.eval.batch_size) == (32, 0, 8)
    assert over.calibration.batch_size == 8 and over.calibration.max_per_group == 64  # the rest kept
    assert over.humaneval == 0 and cap == 3 and over.methods == ("base", "harc")
    assert over.smoothllm == want.smoothllm and over.training == want.training
    assert (paper.lora.r, paper.lora.n_harmful, paper.lora.train.steps) == (32, 6, 400)
    # every field of HARC's LoRA mode and of the training baselines from --set, a nested one included
    sets = ["--set", "lora.r=8", "--set", "lora.train.steps=7", "--set", "training.n_safe=3"]
    tuned, _ = compare_configs(parse([*common, "--preset", "paper", *sets]))
    assert tuned.lora.r == 8 and tuned.lora.train.steps == 7 and tuned.training.n_safe == 3
    assert tuned.lora.train.lr == want.lora.train.lr and tuned.lora.alpha == want.lora.alpha  # the rest kept
    with pytest.raises(HarcError, match=r"lora.train has unknown fields \['stepz'\]"):
        compare_configs(parse([*common, "--set", "lora.train.stepz=7"]))


def test_harc_compare_adaptive_attacks_every_method_with_its_defence_active(
    tiny_dir, tiny_directions_dir, tmp_path, capsys, monkeypatch
):
    from harc_interp.attacks import GCG
    from harc_interp.cli import main

    seen = []
    real_attack = GCG.attack

    def spy(self, run):
        seen.append((self.variant.name, run.goal.id))
        return real_attack(self, run)

    monkeypatch.setattr(GCG, "attack", spy)
    common = ["--model", str(tiny_dir), "--directions", str(tiny_directions_dir), "--max-per-class", "2"]
    args = [*common, "--quiet", "--max-new-tokens", "2", "--samples", "0", "--methods", "base,self_reminder"]
    budget = ["--adaptive", "--adaptive-goals", "2", "--adaptive-steps", "2"]
    budget += ["--set", "gcg.candidates=8", "--set", "gcg.suffix_length=3", "--set", "gcg.max_new_tokens=2"]
    assert main(["compare", *args, *budget, "--out", str(tmp_path / "c")]) == 0
    printed = capsys.readouterr().out
    result = json.loads((tmp_path / "c" / "comparison.json").read_text())
    for row in result["methods"]:
        assert 0 <= row["adaptive_gcg_asr"] <= 1
        cached = tmp_path / "c" / "methods" / row["method"] / "adaptive_result.json"
        adaptive = json.loads(cached.read_text())["result"]
        assert adaptive["n_goals"] == 2 and adaptive["budget"]["steps"] == 2
        assert all(g["steps"] <= 2 for g in adaptive["per_goal"])
        assert (tmp_path / "c" / "methods" / row["method"] / "adaptive" / "attempts.jsonl").is_file()
    # each method attacked the same two goals, as its own variant (the defence active)
    assert len(seen) == 4 and len({g for _, g in seen}) == 2 and len({v for v, _ in seen}) == 2
    assert "adaptive GCG ASR" in (tmp_path / "c" / "comparison.md").read_text()
    attempts = (tmp_path / "c" / "methods" / "base" / "adaptive" / "attempts.jsonl").read_text().splitlines()
    texts = [json.loads(line).get("response") or "" for line in attempts]
    assert attempts and not any(t.strip() and t in printed for t in texts)  # attempts stay in the run folder
