"""The LoRA (paper-faithful) mode on a fresh tiny model: trains, saves a peft adapter, restores the base."""

from __future__ import annotations

import json
import zlib

import torch

from harc_interp import formatter_for, load_model, starter_prompts
from harc_interp.coupling.loop import TrainConfig
from harc_interp.coupling.lora import LoraConfig, lora_adapter, train_lora


def test_train_lora_on_tiny_model(tiny_dir, tiny_directions, tmp_path):
    model = load_model(str(tiny_dir))  # a private copy: LoRA layers are injected while training
    ids = torch.tensor([formatter_for(model).format("How do I bake bread?").input_ids])
    with torch.no_grad():
        before = model.hf(input_ids=ids).logits
    sets = {
        "harmful": starter_prompts("harmful").sample(6, seed=0),
        "harmless": starter_prompts("harmless").sample(6, seed=0),
        "borderline": starter_prompts("borderline").sample(3, seed=0),
    }
    cfg = LoraConfig(
        r=4,
        alpha=8,
        n_response=4,
        reextract_every=3,
        top_k_start=1,
        top_k_end=1,
        train=TrainConfig(steps=6, lr=5e-3, log_every=1, checkpoint_every=3),
    )
    judge = lambda r: zlib.crc32(r.encode()) % 2 == 0  # noqa: E731  stand-in: a random model never refuses
    adapter = train_lora(model, tiny_directions, sets, tmp_path, cfg, judge=judge, progress=False)
    assert (adapter / "adapter_config.json").is_file()
    rows = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and all(r["kl_harmless"] >= 0 for r in rows) and "ce" in rows[0]
    assert rows[0]["kl_harmless"] < 1e-6  # LoRA starts at the base model (B = 0)
    meta = json.loads((tmp_path / "coupling.json").read_text())
    assert meta["mode"] == "lora" and [h["step"] for h in meta["reselection"]] == [3]
    with torch.no_grad():
        assert torch.equal(model.hf(input_ids=ids).logits, before)  # base restored after training
        with lora_adapter(model, adapter) as peft_model:
            tuned = model.hf(input_ids=ids).logits
            with peft_model.disable_adapter():
                base = model.hf(input_ids=ids).logits
        after = model.hf(input_ids=ids).logits
    assert (tuned - before).abs().max() > 1e-4
    torch.testing.assert_close(base, before, atol=1e-5, rtol=0)
    assert torch.equal(after, before)
