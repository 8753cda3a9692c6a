"""`harc directions`, `harc score` and `harc run` (the main job)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..directions.stage import DirectionsConfig
from ..errors import HarcError
from .common import (
    attach_model,
    build_config,
    int_list,
    judge_args,
    judges,
    load,
    load_prompt_files,
    load_role,
    model_args,
    positive_int,
    read_directions,
    str_list,
    within_context,
)

D = DirectionsConfig


def add_parsers(sub) -> None:
    """Add `run`, `directions` and `score`."""
    run = sub.add_parser("run", help="the main job on the offline default model (writes OUT/summary.json)")
    model_args(run)
    run.add_argument("--out", default="runs/main")
    run.add_argument(
        "--harmful", nargs="+", default=None, help="harmful prompt files (default: built-in starter set)"
    )
    run.add_argument(
        "--harmless", nargs="+", default=None, help="harmless prompt files (default: built-in starter set)"
    )
    run.add_argument(
        "--refusal-tokens", default=None, help="comma-separated refusal-start tokens (default: found)"
    )
    run.add_argument(
        "--coupling",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="train the confined coupling with its defaults, evaluate base vs coupled on held-out prompts "
        "and verify it (default: on); --no-coupling stops after the plane",
    )
    judge_args(run)
    run.set_defaults(func=cmd_run)

    dirs = sub.add_parser(
        "directions",
        help="v_harm, v_ref and response directions, probes, selection, causal checks -> OUT/directions.*",
    )
    model_args(dirs)
    dirs.add_argument(
        "--harmful", nargs="+", required=True, help="harmful prompt files, starter:harmful, hf:..."
    )
    dirs.add_argument(
        "--harmless", nargs="+", required=True, help="harmless prompt files, starter:harmless, ..."
    )
    dirs.add_argument("--out", required=True)
    dirs.add_argument(
        "--n-train", type=int, default=None, help=f"prompts per class before filtering (default {D.n_train})"
    )
    dirs.add_argument(
        "--n-val", type=int, default=None, help=f"prompts per class for selection (default {D.n_val})"
    )
    dirs.add_argument(
        "--n-test", type=int, default=None, help=f"held-out prompts per class (default {D.n_test})"
    )
    dirs.add_argument("--no-filter", action="store_true", help="keep every training prompt, refused or not")
    dirs.add_argument(
        "--max-new-tokens",
        type=int,
        default=None,
        help=f"generation length for filtering (default {D.max_new_tokens})",
    )
    dirs.add_argument(
        "--n-response", type=int, default=None, help=f"response tokens pooled (default {D.n_response})"
    )
    dirs.add_argument(
        "--harmful-prefill", default=None, help=f"elicits harmful completions (default {D.harmful_prefill!r})"
    )
    dirs.add_argument("--selection", choices=["arditi", "harc"], default=None, help=f"default {D.selection}")
    dirs.add_argument(
        "--selection-positions",
        default=None,
        help="comma-separated grid positions (t_post, post_0, post_1, ...; Arditi et al. search every "
        "post-instruction token); the causal checks test the picked position's direction (default t_post)",
    )
    dirs.add_argument("--selection-slots", default=None, help="comma-separated slots (default: all)")
    dirs.add_argument(
        "--kl-max", type=float, default=None, help=f"selection's KL filter (default {D.kl_max})"
    )
    dirs.add_argument(
        "--max-layer-fraction",
        type=float,
        default=None,
        help=f"selection's layer filter (default {D.max_layer_fraction})",
    )
    dirs.add_argument("--n-bootstrap", type=int, default=None, help=f"default {D.n_bootstrap}")
    dirs.add_argument(
        "--eval-max-new-tokens",
        type=int,
        default=None,
        help=f"causal checks (default {D.eval_max_new_tokens})",
    )
    dirs.add_argument(
        "--refusal-tokens",
        default=None,
        help="comma-separated refusal-start tokens, e.g. 'I,As' (default: found from the model's refusals)",
    )
    dirs.add_argument("--seed", type=int, default=None)
    dirs.set_defaults(func=cmd_directions)

    score = sub.add_parser(
        "score", help="score prompts with a Directions artifact's probes -> OUT/scores.jsonl"
    )
    model_args(score)
    score.add_argument("--directions", required=True)
    score.add_argument("--prompts", nargs="+", required=True)
    score.add_argument("--position", default="t_inst", choices=["t_inst", "t_post"])
    score.add_argument("--layers", default=None, help="comma-separated slots (default: every probe slot)")
    score.add_argument("--limit", type=positive_int, default=None)
    score.add_argument("--out", required=True)
    score.set_defaults(func=cmd_score)


def _refusal_tokens(model, text: str | None) -> list[int] | None:
    if not text:
        return None
    tokens = []
    for piece in text.split(","):
        ids = model.tokenizer(piece, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise HarcError(f"refusal token {piece!r} is {len(ids)} tokens for this tokenizer, not one")
        tokens.append(ids[0])
    return tokens


def directions_config(args, base: DirectionsConfig | None = None) -> DirectionsConfig:
    """The `DirectionsConfig` from defaults, --config/--set and the verb's flags."""
    flags = {
        name: getattr(args, name, None)
        for name in (
            "n_train", "n_val", "n_test", "max_new_tokens", "n_response", "harmful_prefill", "selection", "kl_max",
            "max_layer_fraction", "n_bootstrap", "eval_max_new_tokens", "batch_size", "seed", "system_prompt",
        )
    }  # fmt: skip
    flags |= {
        "filter_train": False if getattr(args, "no_filter", False) else None,
        "selection_positions": str_list(getattr(args, "selection_positions", None)),
        "selection_slots": int_list(getattr(args, "selection_slots", None)),
    }
    return build_config(DirectionsConfig, "directions", args, flags, base=base)


def cmd_directions(args: argparse.Namespace) -> dict:
    """`harc directions`: the directions stage to --out."""
    from ..directions.stage import extract_directions
    from ..report.figures import write_directions_figures

    config = directions_config(args)
    harmful = load_role(args.harmful, "harmful", None)
    harmless = load_role(args.harmless, "harmless", None)
    model = load(args)
    harmful, harmless = within_context(model, args, harmful), within_context(model, args, harmless)
    refusal_tokens = _refusal_tokens(model, args.refusal_tokens)
    d = extract_directions(
        model, harmful, harmless, args.out, config, refusal_tokens=refusal_tokens, progress=not args.quiet
    )
    write_directions_figures(d, args.out)
    return {
        "out": str(args.out),
        "selected_layer": d.selected_layer,
        "selection": d.selection.method,
        "best_harm_layer": d.metrics["best_harm_layer"],
        "causal_validation": d.causal_validation,
        "refusal_tokens": d.refusal_token_strings,
        "counts": d.counts,
    }


def cmd_score(args: argparse.Namespace) -> dict:
    """`harc score`: the saved probes' P(harmful) per slot for new prompts."""
    from ..artifacts import provenance, stamp_schema, write_json, write_jsonl
    from ..directions.score import score_prompts

    ps = load_prompt_files(args.prompts, None, args.limit)
    d = read_directions(args)
    model = attach_model(args, d)
    ps = within_context(model, args, ps)
    scores = score_prompts(
        model,
        d,
        ps,
        position=args.position,
        layers=int_list(args.layers),
        batch_size=args.batch_size or 16,
        system_prompt=args.system_prompt,
        progress=not args.quiet,
    )
    out = Path(args.out)
    rows = [
        {
            "id": pid,
            "label": lab,
            "probe": dict(zip(map(str, scores.layers), scores.probe[i].tolist(), strict=True)),
            "projection": dict(zip(map(str, scores.layers), scores.projection[i].tolist(), strict=True)),
        }
        for i, (pid, lab) in enumerate(zip(scores.prompt_ids, scores.labels, strict=True))
    ]
    write_jsonl(out / "scores.jsonl", rows)
    auroc = scores.auroc()
    summary = {"position": scores.position, "layers": list(scores.layers), "n": len(rows), "auroc": auroc}
    summary["provenance"] = provenance(model, directions=str(args.directions))
    write_json(out / "scores.json", stamp_schema(summary, "scores", 1))
    best = None
    if auroc:
        j = max(range(len(scores.layers)), key=lambda k: auroc["probe"][k])
        best = {
            "slot": scores.layers[j],
            "probe_auroc": auroc["probe"][j],
            "projection_auroc": auroc["projection"][j],
        }
    return {"out": str(out / "scores.jsonl"), "n": len(rows), "best_probe_slot": best}


def cmd_run(args: argparse.Namespace) -> dict:
    """`harc run`: the main job (`report.pipeline.run_main`)."""
    from ..report.pipeline import main_directions_config, run_main

    harmful = load_role(args.harmful, "harmful", None) if args.harmful else None
    harmless = load_role(args.harmless, "harmless", None) if args.harmless else None
    batch_size = args.batch_size or 16
    config = build_config(DirectionsConfig, "directions", args, base=main_directions_config(batch_size))
    judge, harm_judge = judges(args, Path(args.out))
    model, refusal_tokens = args.model, None
    if args.refusal_tokens or args.device_map:  # otherwise run_main loads (and times) it
        model = load(args)
    if args.refusal_tokens:  # token strings need the tokenizer
        refusal_tokens = _refusal_tokens(model, args.refusal_tokens)
    summary = run_main(
        model,
        args.out,
        harmful=harmful,
        harmless=harmless,
        directions_config=config,
        judge=judge,
        harm_judge=harm_judge,
        refusal_tokens=refusal_tokens,
        dtype=args.dtype,
        device=args.device,
        batch_size=batch_size,
        coupling=args.coupling,
        progress=not args.quiet,
    )
    d = summary["directions"]
    return {
        "model": summary["model"],
        "selected_layer": d["selected_layer"],
        "best_harm_layer": d["best_harm_layer"],
        "causal_validation": d["causal_validation"],
        **({"coupling": _coupling_headline(summary["coupling"])} if "coupling" in summary else {}),
        "seconds": summary["seconds"],
        "report": summary["artifacts"]["report"],
    }


def _coupling_headline(c: dict) -> dict:
    """The main job's coupling numbers for the terminal (rates and KL only: no completions)."""
    keys = ("mean_asr", "v_ref_ablated_upstream_asr", "over_refusal_sampled", "harmless_kl")
    return {
        "slots": c["slots"],
        "margin": c["margin"],
        **{k: [c["base"][k], c["coupled"][k]] for k in keys},
        "confined": c["verify"]["confined"],
    }
