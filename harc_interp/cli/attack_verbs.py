"""`harc attack` (adaptive attacks, GCG or PAIR, on the model with an intervention active) and `harc
pap-rewrite` (PAP's persuasive paraphrases by an attacker model). Prompts, suffixes and answers go to the
run folder only; the command prints ids and numbers."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from ..attacks.gcg import GCGConfig
from ..attacks.pair import PairConfig
from ..errors import HarcError
from .common import build_config, load, load_role, model_args, positive_int, str_list, within_context

# (flag dest, method, config field, type, help)
_FLAGS = (
    ("steps", "gcg", "steps", int, f"GCG steps per goal (default {GCGConfig.steps})"),
    ("candidates", "gcg", "candidates", positive_int, "GCG: random single-token swaps scored per step, in "
     f"forward passes of --batch-size (default {GCGConfig.candidates})"),
    ("topk", "gcg", "topk", positive_int, f"GCG: tokens per suffix position the swaps come from (default {GCGConfig.topk})"),
    ("suffix_length", "gcg", "suffix_length", positive_int, f"GCG: suffix tokens (default {GCGConfig.suffix_length})"),
    ("check_every", "gcg", "check_every", positive_int, "GCG: steps between the judged greedy answers that end the "
     f"search early (default {GCGConfig.check_every}; also whenever the greedy continuation is the target)"),
    ("queries", "pair", "queries", positive_int, f"PAIR: answers of the attacked model per goal (default {PairConfig.queries})"),
    ("streams", "pair", "streams", positive_int, f"PAIR: conversations side by side (default {PairConfig.streams})"),
    ("attacker_max_new_tokens", "pair", "attacker_max_new_tokens", positive_int,
     f"PAIR: length of the attacker's proposals (default {PairConfig.attacker_max_new_tokens})"),
)  # fmt: skip


def add_parsers(sub) -> None:
    """Add `attack` and `pap-rewrite`."""
    at = sub.add_parser(
        "attack",
        help="adaptive attack (GCG suffix search or PAIR refinement) on the model, an intervention active "
        "-> OUT/attack.json, every attempt in OUT/attempts.jsonl",
    )
    model_args(at)
    at.add_argument("--method", choices=["gcg", "pair"], required=True)
    at.add_argument("--goals", nargs="+", required=True, help="harmful goals (files or starter:harmful)")
    at.add_argument("--limit", type=positive_int, default=None, help="a deterministic subset of the goals")
    at.add_argument("--intervention", default=None, help="a `harc train` output or a peft LoRA adapter")
    at.add_argument(
        "--judge",
        default="phrase",
        help="phrase, phrase-prefix, model:MODEL or model-raw:MODEL (judges the answer against the goal)",
    )
    at.add_argument(
        "--target", default=None, help=f"the answer's opening aimed at (default {GCGConfig.target!r})"
    )
    at.add_argument(
        "--max-new-tokens",
        type=positive_int,
        default=None,
        help=f"judged answer length (default: GCG {GCGConfig.max_new_tokens}, PAIR {PairConfig.max_new_tokens})",
    )
    for dest, _, _, kind, text in _FLAGS:
        at.add_argument(f"--{dest.replace('_', '-')}", dest=dest, type=kind, default=None, help=text)
    at.add_argument(
        "--attacker",
        default=None,
        help="PAIR: the attacker model (alias, HF dir, ...; default: the attacked model itself, unedited)",
    )
    at.add_argument("--seed", type=int, default=None)
    at.add_argument("--out", required=True)
    at.set_defaults(func=cmd_attack)

    pap = sub.add_parser(
        "pap-rewrite",
        help="PAP: --model rewrites each goal as a persuasive paraphrase per technique -> OUT/pap.jsonl "
        "(an attack file for --jailbreaks / --prompts)",
    )
    model_args(pap)
    pap.add_argument("--goals", nargs="+", required=True, help="harmful goals (files or starter:harmful)")
    pap.add_argument("--limit", type=positive_int, default=None)
    pap.add_argument(
        "--techniques",
        default=None,
        help="comma-separated persuasion techniques (default: all of data.attack_classes.PERSUASION_TECHNIQUES)",
    )
    pap.add_argument("--max-new-tokens", type=positive_int, default=256)
    pap.add_argument("--out", required=True)
    pap.set_defaults(func=cmd_pap_rewrite)


def attack_config(args) -> GCGConfig | PairConfig:
    """The method's config: defaults, then --config/--set (sections `gcg`, `pair`), then the flags; a
    flag of the other method is an error."""
    cls = GCGConfig if args.method == "gcg" else PairConfig
    other = [
        f"--{d.replace('_', '-')}" for d, m, *_ in _FLAGS if m != args.method and getattr(args, d) is not None
    ]
    if other:
        raise HarcError(f"{', '.join(other)} do not apply to --method {args.method}")
    flags = {f: getattr(args, d) for d, m, f, *_ in _FLAGS if m == args.method}
    flags |= {"target": args.target, "max_new_tokens": args.max_new_tokens, "seed": args.seed}
    flags["system_prompt"] = args.system_prompt
    if args.method == "gcg":
        flags["batch_size"] = args.batch_size
    return build_config(cls, args.method, args, flags)


def cmd_attack(args: argparse.Namespace) -> dict:
    """`harc attack`: GCG or PAIR on every goal (resumable), with --intervention active."""
    import contextlib

    from ..artifacts import provenance, stamp_schema, write_json
    from ..attacks import GCG, Pair, attack_summary, run_goals
    from ..coupling.load import InterventionInfo, load_intervention
    from ..evaluation.judging import make_judge
    from ..model.edits import Variant

    config = attack_config(args)  # before loading anything: a bad flag costs nothing
    if args.intervention:
        InterventionInfo.read(args.intervention)  # a wrong folder is named before the model loads
    goals = load_role(args.goals, "harmful", args.limit)
    model = load(args)
    goals = within_context(model, args, goals)

    judge = make_judge(args.judge, lambda spec: load(args, spec))
    out = Path(args.out)
    opened = load_intervention(model, args.intervention) if args.intervention else contextlib.nullcontext()
    with opened as pair_of_variants:
        tuned, base = pair_of_variants if args.intervention else (Variant(), Variant())
        if isinstance(config, GCGConfig):
            attack = GCG(model, tuned, config, judge)
        else:
            attacker, attacker_variant = (load(args, args.attacker), None) if args.attacker else (model, base)
            attack = Pair(
                model, tuned, attacker, config, judge, attacker_variant, batch_size=args.batch_size or 8
            )
        key = {
            "method": args.method,
            "model": model.fingerprint,
            "intervention": args.intervention,
            "judge": args.judge,
            "attacker": args.attacker,
            "config": dataclasses.asdict(config),
            "goals": goals.ids,
        }
        results = run_goals(goals.prompts, out, key, attack.attack, seed=config.seed, progress=not args.quiet)
    summary = attack_summary(args.method, results, dataclasses.asdict(config))
    summary |= {"model": model.name, "intervention": args.intervention, "judge": args.judge}
    if args.method == "pair":
        summary["attacker"] = args.attacker or model.name
    write_json(out / "attack.json", stamp_schema(summary | {"provenance": provenance(model)}, "attack", 1))
    shown = ("attack_success", "n_goals", "cpu_seconds", "candidates_per_s", "queries")
    return {
        "out": str(out / "attack.json"),
        "method": args.method,
        **{k: summary[k] for k in shown if k in summary},
    }


def cmd_pap_rewrite(args: argparse.Namespace) -> dict:
    """`harc pap-rewrite`: the attacker model's persuasive paraphrases of the goals, as an attack file."""
    from ..artifacts import provenance, stamp_schema, write_json, write_jsonl
    from ..attacks.pap import pap_rewrites, prompt_rows

    techniques = str_list(args.techniques)
    if techniques is not None:
        from ..data.attack_classes import check_techniques

        check_techniques(techniques)
    goals = load_role(args.goals, "harmful", args.limit)
    model = load(args)
    ps = pap_rewrites(
        model,
        goals,
        techniques,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size or 8,
        progress=not args.quiet,
    )
    out = Path(args.out)
    write_jsonl(out / "pap.jsonl", prompt_rows(ps))
    meta = {
        "attacker": model.name,
        "techniques": sorted({p.meta["technique"] for p in ps.prompts}),
        "n": len(ps),
        "fallbacks": sum(p.meta["fallback"] for p in ps.prompts),
        "max_new_tokens": args.max_new_tokens,
    }
    write_json(out / "pap.json", stamp_schema(meta | {"provenance": provenance(model)}, "pap_rewrite", 1))
    return {"out": str(out / "pap.jsonl"), "n": len(ps), "fallbacks": meta["fallbacks"]}
