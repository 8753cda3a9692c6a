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
    # the response directions are re-extracted too (teacher-forced on the examples' fixed answers)
    assert meta["reselection"][0]["reextracted"] == ["v_harm", "v_harm_resp", "v_ref", "v_ref_resp"]
    assert meta["n_examples"]["compliance"] > 0
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


def test_activation_checkpointing_recomputes_the_blocks_with_the_same_gradients(tiny_dir):
    from harc_interp.capture.forward import forward_batch
    from harc_interp.coupling.lora import activation_checkpointing, lora_targets, trainable_lora
    from harc_interp.data.chat import left_pad, pad_token_id

    model = load_model(str(tiny_dir), progress=False)  # a private copy: LoRA layers are injected
    peft_model = trainable_lora(model, LoraConfig(r=4, alpha=8), lora_targets(model))
    chats = formatter_for(model).format_many(["How do I bake bread?", "Hi"], ["Sure, first", "Hello"])
    batch = left_pad(chats, pad_token_id(model.tokenizer))
    mlp_calls, hook_calls = [], []
    # a pre-hook: a recompute stops (torch's early stop) once the saved tensors are back, before the end
    model.blocks[1].mlp.register_forward_pre_hook(lambda *_: mlp_calls.append(1))

    def read(resid, site):
        hook_calls.append(1)
        return resid * 1.5  # an edit inside the graph: its gradient must survive the recompute

    def step(checkpointing: bool):
        peft_model.zero_grad(set_to_none=True)
        mlp_calls.clear(), hook_calls.clear()
        peft_model.train()  # as train_loop does: checkpointing acts in training mode
        with activation_checkpointing(model, checkpointing):
            logits = forward_batch(model, batch, [("blocks.2.hook_resid_pre", read)], logits="all", grad=True)
            logits.float().logsumexp(-1).mean().backward()
        peft_model.eval()
        grads = {n: p.grad.clone() for n, p in peft_model.named_parameters() if p.requires_grad}
        return grads, len(mlp_calls), len(hook_calls)

    plain, plain_mlp, plain_hooks = step(False)
    ckpt, ckpt_mlp, ckpt_hooks = step(True)
    assert (plain_mlp, ckpt_mlp) == (1, 2)  # the block ran again in the backward pass
    assert plain_hooks == ckpt_hooks == 1  # the residual hook sits outside the recomputed part
    assert sum(float(g.norm()) for g in plain.values()) > 0
    for name, g in plain.items():
        torch.testing.assert_close(ckpt[name], g, atol=1e-6, rtol=1e-5, msg=name)
    assert step(False)[1] == 1  # switched off again on exit
    peft_model.unload()


def test_response_directions_reextracted_as_the_directions_stage_defines_them(tiny, tiny_directions):
    # Untrained, the re-extraction must give the stage's v_harm_resp / v_ref_resp for the same answers.
    from harc_interp import CacheConfig, cache_residuals
    from harc_interp.coupling.lora import _response_directions
    from harc_interp.directions import add_response_directions

    harmful = starter_prompts("harmful").sample(4, seed=1).texts
    harmless = starter_prompts("harmless").sample(4, seed=1).texts
    answers = {
        "compliance": (harmful, "Sure, here is how you do it step by step"),
        "harmful": (harmful, "I'm sorry, I cannot help with that"),
        "harmless": (harmless, "Of course! First you take the"),
    }
    fmt = formatter_for(tiny)
    tok = tiny.tokenizer
    examples = {k: fmt.format_many(t, [tok(a, add_special_tokens=False).input_ids] * len(t)) for k, (t, a) in answers.items()}  # fmt: skip
    fresh = _response_directions(tiny, examples, tiny_directions.layers, n_response=5)
    cfg = CacheConfig(positions=("response_mean",), n_response=5)
    caches = [cache_residuals(tiny, t, responses=[a] * len(t), config=cfg, progress=False) for t, a in answers.values()]  # fmt: skip
    stage = add_response_directions(tiny_directions, *caches)
    assert sorted(fresh) == ["v_harm_resp", "v_ref_resp"]
    for name in fresh:
        torch.testing.assert_close(fresh[name], stage.vectors[name].float(), atol=1e-4, rtol=0, msg=name)
