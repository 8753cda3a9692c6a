"""The training-time baselines (SFT, DPO, Circuit Breakers, RepBend) on a private tiny model: each loss
falls on one overfitted batch, the adapter comes off cleanly, a finished run is read back, and
`compare_methods` gives a training-time method its row."""

from __future__ import annotations

import json

import pytest
import torch

from harc_interp import formatter_for, load_model, starter_prompts
from harc_interp.baselines import training as training_mod
from harc_interp.baselines.training import (
    TRAINING_METHODS,
    TrainingBaselineConfig,
    baseline_variant,
    target_slots,
    train_baseline,
)
from harc_interp.coupling.loop import TrainConfig

# what each method's log says fell: the total, except CB, whose total falls by its schedule alone
FALLS = {"sft": "loss", "dpo": "loss", "circuit_breakers": "reroute", "repbend": "loss"}
# the tiny model's residuals (norm 30-60) turn slowly under a rank-4 adapter: the representation
# methods need a higher rate to move within 6 steps
LR = {"sft": 1e-2, "dpo": 1e-2, "circuit_breakers": 3e-2, "repbend": 3e-2}


def small_config(steps: int = 6, lr: float = 1e-2) -> TrainingBaselineConfig:
    """Pools of 2 + 2 drawn whole each step (one overfitted batch), 4-token answers, a high rate."""
    return TrainingBaselineConfig(
        r=4,
        alpha=8,
        n_response=4,
        n_unsafe=2,
        n_safe=2,
        train=TrainConfig(steps=steps, lr=lr, log_every=1, checkpoint_every=steps),
    )


@pytest.fixture(scope="module")
def model(tiny_dir):
    return load_model(str(tiny_dir))  # a private copy: LoRA layers are injected while training


@pytest.fixture(scope="module")
def sets():
    return {
        "harmful": starter_prompts("harmful").sample(2, seed=0),
        "harmless": starter_prompts("harmless").sample(1, seed=0),
        "borderline": starter_prompts("borderline").sample(1, seed=0),
    }


def logits_of(model):
    ids = torch.tensor([formatter_for(model).format("How do I bake bread?").input_ids])
    with torch.no_grad():
        return model.hf(input_ids=ids).logits


@pytest.mark.parametrize("method", TRAINING_METHODS)
def test_loss_falls_and_the_adapter_comes_off_cleanly(model, sets, method, tmp_path):
    before = logits_of(model)
    weights = {k: v.clone() for k, v in model.hf.state_dict().items()}
    data_dir = tmp_path / "data"
    rec = train_baseline(
        model, method, sets, tmp_path / method, small_config(lr=LR[method]), data_dir=data_dir, progress=False
    )
    rows = [json.loads(line) for line in (tmp_path / method / "train" / "log.jsonl").read_text().splitlines()]
    key = FALLS[method]
    assert len(rows) == 6 and rows[-1][key] < rows[0][key], [r[key] for r in rows]
    assert rec["trainable_parameters"] > 0 and rec["training_seconds"] >= 0
    assert rec["n_examples"]["compliance"] == 2 and rec["n_examples"]["retain"] == 2
    assert torch.equal(logits_of(model), before)  # training leaves the base model as it was
    with baseline_variant(model, rec["adapter"], method) as variant:
        assert torch.equal(logits_of(model), before)  # outside the variant's context: the base model
        with variant.context():
            tuned = logits_of(model)
    assert (tuned - before).abs().max() > 1e-4
    assert torch.equal(logits_of(model), before)
    after = model.hf.state_dict()
    assert after.keys() == weights.keys() and all(torch.equal(after[k], w) for k, w in weights.items())


def test_a_finished_run_is_read_back_and_data_shared(model, sets, tmp_path, monkeypatch):
    cfg = small_config(steps=2)
    first = train_baseline(model, "sft", sets, tmp_path / "sft", cfg, data_dir=tmp_path / "d", progress=False)
    files = sorted(p.name for p in (tmp_path / "d").iterdir())
    assert len(files) == 3  # unsafe greedy, unsafe prefilled, safe greedy
    monkeypatch.setattr(training_mod, "train_loop", lambda *a, **k: pytest.fail("a finished run was redone"))
    again = train_baseline(model, "sft", sets, tmp_path / "sft", cfg, data_dir=tmp_path / "d", progress=False)
    assert again == first
    monkeypatch.undo()
    train_baseline(model, "dpo", sets, tmp_path / "dpo", cfg, data_dir=tmp_path / "d", progress=False)
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == files  # DPO reused the answers


def test_target_slots_are_relative_depths():
    assert target_slots(32, (0.3, 0.6)) == (10, 19)
    assert target_slots(4, (0.0, 0.3, 1.0)) == (1, 4)


def test_compare_runs_a_training_time_method(model, tiny_directions, tmp_path):
    from harc_interp.baselines import SteeringCalibration
    from harc_interp.data.prompts import safety_splits
    from harc_interp.evaluation.compare import CompareConfig, compare_methods
    from harc_interp.evaluation.safety import EvalConfig

    sets = [starter_prompts(k) for k in ("harmful", "harmless", "borderline", "attacks")]
    train, held_out = safety_splits(*sets, max_per_class=1)
    train = {k: v.sample(min(2, len(v)), seed=0) for k, v in train.items()}
    held_out = {k: v.sample(min(2, len(v)), seed=0) for k, v in held_out.items()}
    config = CompareConfig(
        methods=("base", "circuit_breakers"),
        eval=EvalConfig(max_new_tokens=2, batch_size=8, samples=0),
        calibration=SteeringCalibration(max_per_group=2, max_new_tokens=2),
        training=small_config(steps=2),
        throughput_prompts=1,
        throughput_tokens=2,
    )
    before = logits_of(model)
    result = compare_methods(model, tiny_directions, train, held_out, tmp_path, config, progress=False)
    row = result["methods"][1]
    assert row["method"] == "circuit_breakers" and row["trainable_parameters"] > 0
    assert "| circuit_breakers |" in (tmp_path / "comparison.md").read_text()
    stored = json.loads((tmp_path / "methods" / "circuit_breakers" / "result.json").read_text())["result"]
    assert stored["training_seconds"] >= 0
    assert (tmp_path / "methods" / "circuit_breakers" / "adapter" / "adapter_config.json").is_file()
    assert torch.equal(logits_of(model), before)


def test_compare_runs_harc_in_its_lora_mode(model, tiny_directions, tmp_path):
    import zlib

    from harc_interp.baselines import SteeringCalibration
    from harc_interp.coupling.lora import LoraConfig
    from harc_interp.data.prompts import safety_splits
    from harc_interp.evaluation.compare import CompareConfig, compare_methods
    from harc_interp.evaluation.safety import EvalConfig

    sets = [starter_prompts(k) for k in ("harmful", "harmless", "borderline", "attacks")]
    train, held_out = safety_splits(*sets, max_per_class=1)
    train = {k: v.sample(min(3, len(v)), seed=0) for k, v in train.items()}
    held_out = {k: v.sample(min(2, len(v)), seed=0) for k, v in held_out.items()}
    lora = LoraConfig(
        r=4, alpha=8, n_response=3, top_k_start=1, top_k_end=1, reextract_every=1,
        train=TrainConfig(steps=2, lr=1e-3, log_every=1, checkpoint_every=2),
    )  # fmt: skip
    config = CompareConfig(
        methods=("base", "harc_lora"),
        eval=EvalConfig(max_new_tokens=2, batch_size=8, samples=0),
        calibration=SteeringCalibration(max_per_group=2, max_new_tokens=2),
        lora=lora,
        throughput_prompts=1,
        throughput_tokens=2,
    )
    judge = lambda r: zlib.crc32(r.encode()) % 2 == 0  # noqa: E731  a random model never refuses by phrase
    before = logits_of(model)
    result = compare_methods(
        model, tiny_directions, train, held_out, tmp_path, config, judge=judge, progress=False
    )
    row = result["methods"][1]
    assert row["method"] == "harc_lora" and row["trainable_parameters"] > 0
    coupling = json.loads((tmp_path / "methods" / "harc_lora" / "coupling" / "coupling.json").read_text())
    assert coupling["mode"] == "lora" and coupling["config"]["r"] == 4
    assert "| harc_lora |" in (tmp_path / "comparison.md").read_text()
    assert torch.equal(logits_of(model), before)  # the adapter came off
