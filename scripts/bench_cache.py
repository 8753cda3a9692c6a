"""Benchmark: residual caching throughput against the raw HF forward, and peak memory vs prompt count.

Prints figures and ratios measured in one process on one machine (targets: caching throughput
>= 0.95x the raw HF forward on the same batches; peak memory for 512 prompts within 10% of 64).

    python scripts/bench_cache.py                        # CPU float32, default offline model
    python scripts/bench_cache.py --device cuda --dtype bfloat16 --n 64 --batch-size 32
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def prompt_texts(n: int) -> list[str]:
    """Harmful + harmless prompts from ../shared/data when present, else the starter set."""
    from harc_interp import load_prompts, starter_prompts

    if (SHARED / "harmful_dev.jsonl").is_file():
        ps = load_prompts(SHARED / "harmful_dev.jsonl") + load_prompts(SHARED / "harmless_dev.jsonl")
    else:
        ps = starter_prompts("harmful") + starter_prompts("harmless")
    texts = [t for t in ps.sample(None, seed=0).texts if len(t) < 400]
    return (texts * (n // len(texts) + 1))[:n]


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str, repeats: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - t)
    return best


def throughput(args) -> dict:
    from harc_interp import CacheConfig, cache_residuals, formatter_for, load_model
    from harc_interp.data.chat import left_pad, pad_token_id

    model = load_model(args.model, dtype=args.dtype, device=args.device)
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
    for name, fn in [
        ("raw_hf_output_hidden_states", raw_hidden_states),
        ("harc_cache_residuals", ours),
        ("bridge_run_with_cache", bridge_cache),
    ]:
        t = timed(fn, args.device, args.repeats)
        out[f"{name}_s"] = round(t, 3)
        out[f"{name}_throughput_vs_raw"] = round(t_raw / t, 3)
    return out


def peak_memory_child(args) -> None:
    """Run in a subprocess: cache N prompts to disk and report this process's peak RSS."""
    from harc_interp import CacheConfig, cache_residuals, load_model

    model = load_model(args.model, dtype=args.dtype, device=args.device)
    texts = prompt_texts(args.n)
    with tempfile.TemporaryDirectory() as d:
        acts = cache_residuals(
            model, texts, out_dir=d, config=CacheConfig(batch_size=args.batch_size), progress=False
        )
        _ = float(acts.resid[:, -1, -1].sum())  # touch a slice of the memory-mapped result
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB on Linux
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
    p.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--device", default="cpu")
    p.add_argument("--n", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--memory-counts", type=int, nargs="*", default=[64, 512])
    p.add_argument("--skip-memory", action="store_true")
    p.add_argument("--child-memory", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child_memory:
        peak_memory_child(args)
        return
    report = {"throughput": throughput(args)}
    print(json.dumps(report, indent=1), flush=True)
    if not args.skip_memory:
        report |= peak_memory(args)
        print(json.dumps({k: v for k, v in report.items() if k != "throughput"}, indent=1))


if __name__ == "__main__":
    main()
