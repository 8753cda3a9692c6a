"""`harc` command line: a thin wrapper over the library. Never prints model completions."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from .errors import HarcError
from .model import DEFAULT_MODEL


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"alias, HF dir, .gguf file or hub id (default {DEFAULT_MODEL})",
    )
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--system-prompt", default=None, help="system message (default: the template's own)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _load_prompt_files(paths: list[str], label: str | None, limit: int | None):
    from .prompts import load_prompts

    sets = [load_prompts(p, label=label) for p in paths]
    ps = sets[0]
    for s in sets[1:]:
        ps = ps + s
    if ps.templates and not ps.prompts:
        raise HarcError("these files hold only attack templates; fill them with goals first (expand_attacks)")
    return ps.sample(limit, seed=0) if limit else ps


def _int_list(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise HarcError(f"--layers must be comma-separated integers, got {text!r}") from None


def cmd_cache(args) -> dict:
    from .activations import CacheConfig, cache_residuals
    from .model import load_model

    ps = _load_prompt_files(args.prompts, args.label, args.limit)
    responses = None
    if args.responses:
        by_id = {
            r["id"]: r["response"]
            for r in map(json.loads, Path(args.responses).read_text().splitlines())
            if r
        }
        missing = [i for i in ps.ids if i not in by_id]
        if missing:
            raise HarcError(f"{args.responses} has no response for prompt ids {missing[:5]}")
        responses = [by_id[i] for i in ps.ids]
    config = CacheConfig(
        layers=_int_list(args.layers),
        positions=tuple(args.positions.split(",")),
        n_response=args.n_response,
        batch_size=args.batch_size,
        shard_size=args.shard_size,
        system_prompt=args.system_prompt,
    )
    model = load_model(args.model, dtype=args.dtype, device=args.device)
    acts = cache_residuals(
        model, ps, out_dir=args.out, responses=responses, config=config, progress=not args.quiet
    )
    return {
        "out": str(args.out),
        "resid_shape": list(acts.resid.shape),
        "positions": list(acts.positions),
        "layers": list(acts.layers),
    }


def cmd_generate(args) -> dict:
    from .artifacts import write_json
    from .generate import generate
    from .model import load_model

    ps = _load_prompt_files(args.prompts, args.label, args.limit)
    model = load_model(args.model, dtype=args.dtype, device=args.device)
    gens = generate(
        model,
        ps,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        system_prompt=args.system_prompt,
        progress=not args.quiet,
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / ".generations.jsonl.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for p, g in zip(ps.prompts, gens, strict=True):
            f.write(
                json.dumps(
                    {
                        "id": g.prompt_id,
                        "label": p.label,
                        "attack_class": p.attack_class,
                        "prompt": g.instruction,
                        "response": g.response,
                        "finished": g.finished,
                    },
                    ensure_ascii=False,
                )
                + "\n"
            )
    tmp.replace(out / "generations.jsonl")
    write_json(
        out / "generations.json", {"model": model.name, "max_new_tokens": args.max_new_tokens, "n": len(gens)}
    )
    return {"out": str(out / "generations.jsonl"), "n": len(gens)}


def cmd_directions(args) -> dict:
    from .extract import DirectionsConfig, extract_directions
    from .model import load_model

    config = DirectionsConfig(
        n_train=args.n_train,
        n_val=args.n_val,
        n_test=args.n_test,
        filter_train=not args.no_filter,
        max_new_tokens=args.max_new_tokens,
        n_response=args.n_response,
        selection=args.selection,
        selection_positions=tuple(args.selection_positions.split(",")),
        selection_slots=_int_list(args.selection_slots),
        n_bootstrap=args.n_bootstrap,
        eval_max_new_tokens=args.eval_max_new_tokens,
        batch_size=args.batch_size,
        seed=args.seed,
        system_prompt=args.system_prompt,
    )
    harmful = _load_prompt_files(args.harmful, "harmful", None)
    harmless = _load_prompt_files(args.harmless, "harmless", None)
    model = load_model(args.model, dtype=args.dtype, device=args.device)
    d = extract_directions(model, harmful, harmless, args.out, config, progress=not args.quiet)
    m = d.meta
    return {
        "out": str(args.out),
        "selected_layer": d.selected_layer,
        "selection": m["selection"]["method"],
        "best_harm_layer": m["metrics"]["best_harm_layer"],
        "causal_validation": m["causal_validation"],
        "refusal_tokens": m["refusal_token_strings"],
        "counts": m["counts"],
    }


def cmd_run(args) -> dict:
    from .pipeline import run_main

    harmful = _load_prompt_files(args.harmful, "harmful", None) if args.harmful else None
    harmless = _load_prompt_files(args.harmless, "harmless", None) if args.harmless else None
    summary = run_main(
        args.model,
        args.out,
        harmful=harmful,
        harmless=harmless,
        batch_size=args.batch_size,
        dtype=args.dtype,
        device=args.device,
        progress=not args.quiet,
    )
    d = summary["directions"]
    return {
        "model": summary["model"],
        "selected_layer": d["selected_layer"],
        "best_harm_layer": d["best_harm_layer"],
        "causal_validation": d["causal_validation"],
        "seconds": summary["seconds"],
        "report": summary["artifacts"]["report"],
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="harc", description="Harmfulness and refusal directions in chat LLMs."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="the main job on the offline default model (writes OUT/summary.json)")
    _model_args(run)
    run.add_argument("--out", default="runs/main")
    run.add_argument(
        "--harmful", nargs="+", default=None, help="harmful prompt files (default: built-in starter set)"
    )
    run.add_argument(
        "--harmless", nargs="+", default=None, help="harmless prompt files (default: built-in starter set)"
    )
    run.set_defaults(func=cmd_run)

    cache = sub.add_parser("cache", help="cache residuals at layer slots x named positions")
    _model_args(cache)
    cache.add_argument(
        "--prompts",
        nargs="+",
        required=True,
        help="JSONL/CSV files, starter:KIND or hf:NAME[:SPLIT[:COLUMN]]",
    )
    cache.add_argument("--label", default=None, help="override every prompt's label")
    cache.add_argument("--limit", type=int, default=None, help="a deterministic random subset of this size")
    cache.add_argument("--out", required=True)
    cache.add_argument("--layers", default=None, help="comma-separated slots 0..n_layers (default: all)")
    cache.add_argument(
        "--positions", default="t_inst,t_post", help="t_inst,t_post,post_instruction,response_mean"
    )
    cache.add_argument("--responses", default=None, help="JSONL with id and response, for response_mean")
    cache.add_argument("--n-response", type=int, default=32)
    cache.add_argument("--shard-size", type=int, default=256)
    cache.set_defaults(func=cmd_cache)

    gen = sub.add_parser(
        "generate", help="greedy batched generation; responses go to OUT/generations.jsonl only"
    )
    _model_args(gen)
    gen.add_argument("--prompts", nargs="+", required=True)
    gen.add_argument("--label", default=None)
    gen.add_argument("--limit", type=int, default=None)
    gen.add_argument("--out", required=True)
    gen.add_argument("--max-new-tokens", type=int, default=64)
    gen.set_defaults(func=cmd_generate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        result = args.func(args)
    except HarcError as e:
        print(f"harc {args.command}: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
