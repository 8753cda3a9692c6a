"""What the benchmark scripts share: the prompts, the model (real weights, or the same architecture with
random weights for a machine the weights cannot travel to), and a timer that waits for the GPU."""

from __future__ import annotations

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


def model_args(p) -> None:
    """--model, --random-weights, --dtype, --device."""
    p.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    p.add_argument(
        "--random-weights",
        action="store_true",
        help="--model is a folder with a config.json and tokenizer only: the same architecture with random "
        "weights (same speed; for a GPU machine the weights cannot be copied to)",
    )
    p.add_argument("--dtype", default="float32")
    p.add_argument("--device", default="cpu")


def load(args):
    """The model the flags name."""
    from harc_interp import load_model

    if not args.random_weights:
        return load_model(args.model, dtype=args.dtype, device=args.device, progress=False)
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    dtype = getattr(torch, args.dtype)
    config = AutoConfig.from_pretrained(args.model)
    with torch.device(args.device):
        hf = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return load_model(hf, tokenizer=AutoTokenizer.from_pretrained(args.model))


def sync(device) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device, repeats: int) -> float:
    """Best of `repeats` wall-clock seconds after one warm-up call."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - t)
    return best
