"""`harc cache` and `harc generate`: residuals at layer slots × named positions, and greedy responses."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..capture.activations import CacheConfig
from ..errors import HarcError
from .common import (
    build_config,
    default,
    int_list,
    load,
    load_prompt_files,
    model_args,
    positive_int,
    str_list,
    within_context,
)


def add_parsers(sub) -> None:
    """Add `cache` and `generate`."""
    cache = sub.add_parser("cache", help="cache residuals at layer slots x named positions")
    model_args(cache)
    cache.add_argument(
        "--prompts",
        nargs="+",
        required=True,
        help="JSONL/CSV files, starter:KIND or hf:NAME[:SPLIT[:COLUMN]]",
    )
    cache.add_argument("--label", default=None, help="override every prompt's label")
    cache.add_argument(
        "--limit", type=positive_int, default=None, help="a deterministic random subset of this size"
    )
    cache.add_argument("--out", required=True)
    cache.add_argument("--layers", default=None, help="comma-separated slots 0..n_layers (default: all)")
    cache.add_argument(
        "--positions",
        default=None,
        help=f"of t_inst,t_post,post_instruction,response_mean (default {','.join(default(CacheConfig, 'positions'))})",
    )
    cache.add_argument("--responses", default=None, help="JSONL with id and response, for response_mean")
    cache.add_argument(
        "--n-response", type=int, default=None, help=f"default {default(CacheConfig, 'n_response')}"
    )
    cache.add_argument(
        "--shard-size", type=int, default=None, help=f"default {default(CacheConfig, 'shard_size')}"
    )
    cache.set_defaults(func=cmd_cache)

    gen = sub.add_parser(
        "generate", help="greedy batched generation; responses go to OUT/generations.jsonl only"
    )
    model_args(gen)
    gen.add_argument("--prompts", nargs="+", required=True)
    gen.add_argument("--label", default=None)
    gen.add_argument("--limit", type=positive_int, default=None)
    gen.add_argument("--out", required=True)
    gen.add_argument("--max-new-tokens", type=positive_int, default=64)
    gen.set_defaults(func=cmd_generate)


def _responses(path: str, ids: list[str]) -> list[str]:
    """The `response` of each prompt id from a JSONL file (as `harc generate` writes it)."""
    p = Path(path)
    if not p.is_file():
        raise HarcError(f"--responses {p} does not exist")
    by_id = {}
    for n, line in enumerate(p.read_text(encoding="utf-8-sig").split("\n"), 1):
        if not line.strip():
            continue  # a blank line (e.g. at the end) is no row
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise HarcError(f"--responses {p}:{n} is not valid JSON: {e}") from None
        if not isinstance(row, dict) or "id" not in row or not isinstance(row.get("response"), str):
            raise HarcError(f"--responses {p}:{n} needs an 'id' and a 'response' (text)")
        by_id[str(row["id"])] = row["response"]
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise HarcError(f"--responses {p} has no response for prompt ids {missing[:5]}")
    return [by_id[i] for i in ids]


def cmd_cache(args: argparse.Namespace) -> dict:
    """`harc cache`: residuals at the requested slots and positions, written to --out."""
    from ..capture.activations import cache_residuals

    ps = load_prompt_files(args.prompts, args.label, args.limit)
    responses = _responses(args.responses, ps.ids) if args.responses else None
    flags = {
        "layers": int_list(args.layers),
        "positions": str_list(args.positions),
        "n_response": args.n_response,
        "batch_size": args.batch_size,
        "shard_size": args.shard_size,
        "system_prompt": args.system_prompt,
    }
    config = build_config(CacheConfig, "cache", args, flags)
    model = load(args)
    if responses is None:  # with responses the rows must stay aligned: a long one is an error
        ps = within_context(model, args, ps)
    acts = cache_residuals(
        model,
        ps,
        out_dir=args.out,
        responses=responses,
        config=config,
        progress=not args.quiet,
        force=args.force,
    )
    return {
        "out": str(args.out),
        "resid_shape": list(acts.resid.shape),
        "positions": list(acts.positions),
        "layers": list(acts.layers),
    }


def cmd_generate(args: argparse.Namespace) -> dict:
    """`harc generate`: greedy generations to --out (never printed)."""
    from ..artifacts import provenance, stamp_schema, write_json, write_jsonl
    from ..capture.generate import generate

    ps = load_prompt_files(args.prompts, args.label, args.limit)
    model = load(args)
    ps = within_context(model, args, ps)
    gens = generate(
        model,
        ps,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size or 16,
        system_prompt=args.system_prompt,
        progress=not args.quiet,
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = [
        {
            "id": g.prompt_id,
            "label": p.label,
            "attack_class": p.attack_class,
            "prompt": g.instruction,
            "response": g.response,
            "finished": g.finished,
        }
        for p, g in zip(ps.prompts, gens, strict=True)
    ]
    write_jsonl(out / "generations.jsonl", rows)
    meta = {"model": model.name, "max_new_tokens": args.max_new_tokens, "n": len(gens)}
    write_json(
        out / "generations.json", stamp_schema(meta | {"provenance": provenance(model)}, "generations", 1)
    )
    return {"out": str(out / "generations.jsonl"), "n": len(gens)}
