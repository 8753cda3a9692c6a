"""Benchmark: residual caching throughput against the raw HF forward, and peak memory vs prompt count.

Prints figures and ratios measured in one process on one machine (targets: caching throughput
>= 0.97x the raw HF forward on the same batches on CPU, >= 0.95x on GPU; peak memory for 4096 prompts
within 10% of 64: the cache streams to disk).

    python scripts/bench_cache.py                        # CPU float32, default offline model
    python scripts/bench_cache.py --device cuda --dtype bfloat16 --n 256 --batch-size 32
    python scripts/bench_cache.py --model DIR --random-weights --device cuda ...   # config + tokenizer only
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile

import torch
from bench_common import load, model_args, prompt_texts, timed


def throughput(args) -> dict:
    from harc_interp import CacheConfig, cache_residuals, formatter_for
    from harc_interp.data.chat import left_pad, pad_token_id

    model = load(args)
    texts = prompt_texts(args.n)
    chats = formatter_for(model).format_many(texts)
    order = sorted(
        range(len(chats)), key=lambda i: -chats[i].n_prompt
    )  # the same batches cache_residuals uses
    batches = [
        left_pad([chats[j] for j in order[i : i + args.batch_size]], pad_token_id(model.tokenizer))
        for i in range(0, len(order), args.batch_size)
    ]
    dev = model.device

    def raw_forward():
        with torch.no_grad():
            for b in batches:
                model.hf(
                    input_ids=b.input_ids.to(dev), attention_mask=b.attention_mask.to(dev), use_cache=False
                )

    def raw_hidden_states():
        with torch.no_grad():
            for b in batches:
                model.hf(
                    input_ids=b.input_ids.to(dev),
                    attention_mask=b.attention_mask.to(dev),
                    use_cache=False,
                    output_hidden_states=True,
                )

    cfg = CacheConfig(positions=("t_inst", "t_post"), batch_size=args.batch_size)
    ours = lambda: cache_residuals(model, texts, config=cfg, progress=False)  # noqa: E731
    names = [f"blocks.{layer}.hook_resid_pre" for layer in range(model.n_layers)]

    def bridge_cache():
        with torch.no_grad():
            for b in batches:
                model.bridge.run_with_cache(
                    b.input_ids.to(dev), attention_mask=b.attention_mask.to(dev), names_filter=names
                )

    out = {
        "device": str(dev),
        "dtype": str(model.dtype),
        "prompts": len(texts),
        "batch_size": args.batch_size,
        "mean_tokens": sum(c.n_prompt for c in chats) / len(chats),
    }
    t_raw = timed(raw_forward, args.device, args.repeats)
    out["raw_hf_forward_s"] = round(t_raw, 3)
    runs = [("raw_hf_output_hidden_states", raw_hidden_states), ("harc_cache_residuals", ours)]
    if not args.random_weights:  # the bridge boots from the model's folder
        runs.append(("bridge_run_with_cache", bridge_cache))
    for name, fn in runs:
        t = timed(fn, args.device, args.repeats)
        out[f"{name}_s"] = round(t, 3)
        out[f"{name}_throughput_vs_raw"] = round(t_raw / t, 3)
    return out


def peak_memory_child(args) -> None:
    """Run in a subprocess: cache N prompts to disk and report this process's peak RSS."""
    from harc_interp import CacheConfig, cache_residuals

    model = load(args)
    texts = prompt_texts(args.n)
    with tempfile.TemporaryDirectory() as d:
        acts = cache_residuals(
            model, texts, out_dir=d, config=CacheConfig(batch_size=args.batch_size), progress=False
        )
        # the peak of caching itself, before anything reads the memory-mapped result (reading one value
        # per prompt maps the kernel's fault-around pages of each row: a reader's cost, not the cache's)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB on Linux
        _ = float(acts.resid[:, -1, -1].sum())  # the result is readable
    if args.device.startswith("cuda"):
        peak_gpu = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_gpu = 0.0
    print(json.dumps({"n": args.n, "peak_rss_mib": round(peak, 1), "peak_gpu_mib": round(peak_gpu, 1)}))


def peak_memory(args) -> dict:
    results = {}
    for n in args.memory_counts:
        cmd = [
            sys.executable,
            __file__,
            "--child-memory",
            "--n",
            str(n),
            "--model",
            args.model,
            *(["--random-weights"] if args.random_weights else []),
            "--dtype",
            args.dtype,
            "--device",
            args.device,
            "--batch-size",
            str(args.batch_size),
        ]
        line = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        results[n] = json.loads(line)
    lo, hi = min(results), max(results)
    key = "peak_gpu_mib" if args.device.startswith("cuda") else "peak_rss_mib"
    return {
        "peak_memory": results,
        f"{key}_ratio_{hi}_vs_{lo}": round(results[hi][key] / results[lo][key], 3),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    model_args(p)
    p.add_argument("--n", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--memory-counts", type=int, nargs="*", default=[64, 4096])
    p.add_argument("--skip-memory", action="store_true")
    p.add_argument("--skip-throughput", action="store_true")
    p.add_argument("--child-memory", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child_memory:
        peak_memory_child(args)
        return
    report = {} if args.skip_throughput else {"throughput": throughput(args)}
    print(json.dumps(report, indent=1), flush=True)
    if not args.skip_memory:
        report |= peak_memory(args)
        print(json.dumps({k: v for k, v in report.items() if k != "throughput"}, indent=1))


if __name__ == "__main__":
    main()
