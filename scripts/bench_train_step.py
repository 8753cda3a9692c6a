"""Benchmark: a training step through the model against the frozen forward, in one process.

On one batch of chats with answers (teacher-forced, as the LoRA mode and the training-time baselines
train): the frozen forward (no grad, every position's logits), a LoRA step (peft adapters on every
projection: forward with grad, the loss, backward, AdamW) and the same step with activation
checkpointing; on CUDA the peak memory of each. The subspace coupling trains on cached plane coordinates
and never runs the model: its step is timed too, for scale.

    python scripts/bench_train_step.py                                 # CPU float32, the 0.5B model
    python scripts/bench_train_step.py --device cuda --dtype bfloat16 --batch-size 16 --response-tokens 128
"""

from __future__ import annotations

import argparse
import json

import torch
from bench_common import load, model_args, prompt_texts, timed

ANSWER = "Sure, here is a detailed answer with every step explained in order, one after the other. "


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    model_args(p)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--response-tokens", type=int, default=32)
    p.add_argument("--lora-r", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()

    from harc_interp import formatter_for
    from harc_interp.capture.forward import forward_batch, response_logprobs
    from harc_interp.coupling.lora import LoraConfig, activation_checkpointing, lora_targets, trainable_lora
    from harc_interp.coupling.maps import PlaneMap
    from harc_interp.data.chat import left_pad, pad_token_id

    model = load(args)
    tok = model.tokenizer
    answer = tok(ANSWER * 20, add_special_tokens=False).input_ids[: args.response_tokens]
    chats = formatter_for(model).format_many(prompt_texts(args.batch_size), [answer] * args.batch_size)
    batch = left_pad(chats, pad_token_id(tok))
    dev = model.device
    report = {
        "device": str(dev),
        "dtype": str(model.dtype),
        "batch": args.batch_size,
        "tokens_per_row": int(batch.input_ids.shape[1]),
    }

    def frozen():
        forward_batch(model, batch, logits="all")

    peft_model = trainable_lora(model, LoraConfig(r=args.lora_r, alpha=2 * args.lora_r), lora_targets(model))
    params = [p for p in peft_model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5)

    def lora_step():
        opt.zero_grad(set_to_none=True)
        logits = forward_batch(model, batch, logits="all", grad=True)
        lps = response_logprobs(logits, chats, batch)
        loss = torch.stack([-lp.max(-1).values.mean() for lp in lps]).mean()
        loss.backward()
        opt.step()

    def measure(name, fn, checkpointing=False):
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        with activation_checkpointing(model, checkpointing):
            seconds = timed(fn, dev, args.repeats)
        report[f"{name}_s"] = round(seconds, 4)
        if dev.type == "cuda":
            report[f"{name}_peak_gpu_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        return seconds

    t_frozen = measure("frozen_forward", frozen)
    peft_model.train()  # as train_loop does
    t_lora = measure("lora_step", lora_step)
    t_ckpt = measure("lora_step_checkpointed", lora_step, checkpointing=True)
    peft_model.eval()
    peft_model.unload()
    report["lora_step_vs_frozen_forward"] = round(t_lora / t_frozen, 2)
    report["lora_step_checkpointed_vs_frozen_forward"] = round(t_ckpt / t_frozen, 2)
    report["lora_trainable_parameters"] = sum(p.numel() for p in params)

    # the subspace coupling's map as the defaults build it: one per span role, reading 3 slots x 6 span tokens
    roles, n_context, n = 6, 18, 256
    plane = PlaneMap(torch.zeros(roles, 2), torch.ones(roles, 2), n_context=n_context).to(dev)
    z, ctx = torch.randn(n, 2, device=dev), torch.randn(n, n_context, 2, device=dev)
    role = torch.randint(roles, (n,), device=dev)
    map_opt = torch.optim.AdamW(plane.parameters(), lr=1e-2)

    def map_step():
        map_opt.zero_grad(set_to_none=True)
        plane(z, role, ctx).square().mean().backward()
        map_opt.step()

    report["subspace_map_step_s"] = round(timed(map_step, dev, args.repeats), 5)
    report["subspace_map_step_vs_frozen_forward"] = round(report["subspace_map_step_s"] / t_frozen, 4)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
