"""Benchmark: hooked generation against plain Hugging Face `generate`, in one process on one machine.

Both sides generate greedily for the same prompts in the same batches (the package's length batches)
with the same number of new tokens. The plain side is `model.hf.generate` on left-padded batches; the
package's side is `generate_chats` (shared template prefix, span declared) with a hook active at every
layer slot it names: an addition of a zero vector (the hook machinery's cost, the same tokens) and, with
--steer C, C x a random unit direction at the middle slot (a steering edit; other tokens). Targets:
hooked generation >= 0.9x HF generate on CPU, >= 1.0x on GPU.

    python scripts/bench_generate.py                                   # CPU float32, the 0.5B model
    python scripts/bench_generate.py --device cuda --dtype bfloat16 --n 256 --batch-size 64
"""

from __future__ import annotations

import argparse
import json

import torch
from bench_common import load, model_args, prompt_texts, timed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    model_args(p)
    p.add_argument("--n", type=int, default=32, help="prompts")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--steer", type=float, default=4.0, help="coefficient of the steering run (0: skip it)")
    args = p.parse_args()

    from harc_interp import formatter_for
    from harc_interp.capture.generate import generate_chats, length_batches, stop_ids
    from harc_interp.data.chat import left_pad, pad_token_id
    from harc_interp.model.edits import addition_hooks

    model = load(args)
    chats = formatter_for(model).format_many(prompt_texts(args.n))
    batches = length_batches([len(c.input_ids) + args.new_tokens for c in chats], args.batch_size)
    dev, pad = model.device, pad_token_id(model.tokenizer)
    plain_kwargs = dict(
        max_new_tokens=args.new_tokens,
        do_sample=False,
        temperature=None,
        top_p=None,
        top_k=None,
        eos_token_id=stop_ids(model),
        pad_token_id=pad,
    )

    def hf_generate() -> list[list[int]]:
        out: list[list[int] | None] = [None] * len(chats)
        with torch.no_grad():
            for _, rows in batches:
                b = left_pad([chats[i] for i in rows], pad, with_response=False)
                ids = model.hf.generate(
                    input_ids=b.input_ids.to(dev), attention_mask=b.attention_mask.to(dev), **plain_kwargs
                )
                for i, row in zip(rows, ids[:, b.input_ids.shape[1] :].tolist(), strict=True):
                    out[i] = row
        return out  # type: ignore[return-value]

    def ours(hooks) -> list[list[int]]:
        gens = generate_chats(
            model,
            chats,
            max_new_tokens=args.new_tokens,
            batch_size=args.batch_size,
            hooks=hooks,
            progress=False,
        )
        return [ids for ids, _ in gens]

    zero = torch.zeros(model.d_model)
    every_slot = [h for s in range(model.n_layers) for h in addition_hooks(model, zero, s)]
    unit = torch.randn(model.d_model, generator=torch.Generator().manual_seed(0))
    steer = addition_hooks(model, args.steer * unit / unit.norm(), model.n_layers // 2)
    runs = {
        "hf_generate": hf_generate,
        "harc_no_hooks": lambda: ours([]),
        "harc_zero_edit_every_slot": lambda: ours(every_slot),
    }
    if args.steer:
        runs["harc_steering_middle_slot"] = lambda: ours(steer)

    def tokens(rows: list[list[int]]) -> int:  # up to and including the first stop token
        stops = set(stop_ids(model))
        return sum(next((i + 1 for i, t in enumerate(r) if t in stops), len(r)) for r in rows)

    report = {
        "device": str(dev),
        "dtype": str(model.dtype),
        "prompts": len(chats),
        "batch_size": args.batch_size,
        "new_tokens": args.new_tokens,
        "batches": len(batches),
    }
    outputs, seconds = {}, {}
    for name, fn in runs.items():
        seconds[name] = timed(lambda fn=fn, name=name: outputs.__setitem__(name, fn()), dev, args.repeats)
        report[f"{name}_s"] = round(seconds[name], 3)
        report[f"{name}_tokens_per_s"] = round(tokens(outputs[name]) / seconds[name], 1)
    base_rate = tokens(outputs["hf_generate"]) / seconds["hf_generate"]
    for name in runs:
        if name != "hf_generate":
            rate = tokens(outputs[name]) / seconds[name]
            report[f"{name}_throughput_vs_hf"] = round(rate / base_rate, 3)
    cut = [r[: tokens([r])] for r in outputs["hf_generate"]]
    for name in ("harc_no_hooks", "harc_zero_edit_every_slot"):
        same = sum(
            a == b[: len(a)] for a, b in zip([r[: tokens([r])] for r in outputs[name]], cut, strict=True)
        )
        report[f"{name}_same_tokens_as_hf"] = f"{same}/{len(cut)}"
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
