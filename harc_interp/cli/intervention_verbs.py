"""`harc train`, `harc eval` and `harc verify`: the coupling intervention, judged and checked."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from ..baselines.training import TrainingBaselineConfig
from ..coupling.lora import LoraConfig, activation_checkpointing
from ..coupling.subspace import SubspaceConfig
from ..data.prompts import SplitConfig
from ..errors import HarcError
from ..evaluation.compare import PRESETS, CompareConfig, ComparePreset
from ..evaluation.safety import EvalConfig
from ..evaluation.verify import VerifyConfig
from .common import (
    attach_model,
    build_config,
    heldout_args,
    int_list,
    judge_args,
    judges,
    load_role,
    model_args,
    positive_int,
    read_directions,
    within_context,
)

S = SubspaceConfig
_CMP = CompareConfig()
# The subspace-only flags: (flag dest, SubspaceConfig field, help).
SUBSPACE_FLAGS = (
    ("slots", "slots", "coupling layer slots (default: 0.6 of the depth, reading the span at 0.25 and 0.42 too)"),
    ("retention_weight", "retention_weight", f"advanced: weight of keeping harmless and borderline coordinates (default {S.retention_weight})"),
    ("margin", "margin", "where harmful-like prompts must reach on each axis, as a multiple of the harmful mean "
     f"(harmless mean = 0; above 1 pushes past the average harmful prompt; default: calibrated: of "
     f"{', '.join(f'{m:g}' for m in S.margin_grid)} (searched by bisection), those that raise the refusal rate of "
     "the validation rows' harmless and borderline prompts by at most --over-refusal-tolerance and their "
     "next-token KL to at most --kl-budget, and of those the one that refuses the validation jailbreaks most)"),
    ("over_refusal_tolerance", "over_refusal_tolerance", "the calibration's budget: how much the validation "
     f"harmless and borderline prompts' refusal rate may rise, judged on greedy answers (default "
     f"{S.over_refusal_tolerance})"),
    ("kl_budget", "kl_budget", "the calibration's budget for capability: the most mean next-token KL (at t_post) the "
     f"validation harmless and borderline prompts may show against the uncoupled model (default {S.kl_budget})"),
    ("plain_margin", "plain_margin", f"advanced: the margin for plain harmful prompts (default {S.plain_margin}); "
     "the model mostly refuses them already, and pushing them hard lifts the borderline prompts next to them"),
    ("plain_response_margin", "plain_response_margin", "advanced: the response margin for plain harmful prompts "
     f"(default {S.plain_response_margin}: only keeps their responses' refusal from falling)"),
    ("safe_raise_weight", "safe_raise_weight", "advanced: cost per gap of raising a harmless or borderline "
     f"prompt's refusal read-out at all (default {S.safe_raise_weight})"),
    ("response_tokens", "response_tokens", f"train the response-token map on the model's first N response tokens "
     f"(default {S.response_tokens}; 0: responses use t_post's map)"),
    ("response_margin", "response_margin", "how far harmful-like responses' refusal read-out is pushed above "
     f"harmless responses', in t_post harmful-harmless gaps (default {S.response_margin})"),
    ("read_slots", "read_slots", "advanced, with the span context: earlier slots (e.g. 6,10) whose span plane "
     "coordinates the maps also read; the edit stays at --slots (default: with default slots, 0.25 and 0.42 of "
     "the depth; else none; "" for none)"),
    ("validation_fraction", "validation_fraction", "share of the training prompts held out of training: the "
     f"calibration's validation rows (default {S.validation_fraction})"),
)  # fmt: skip


def _data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--harmful", nargs="+", default=["starter:harmful"])
    p.add_argument("--harmless", nargs="+", default=["starter:harmless"])
    p.add_argument(
        "--borderline", nargs="+", default=["starter:borderline"], help="safe-but-sensitive prompts"
    )
    p.add_argument(
        "--jailbreaks", nargs="+", default=["starter:attacks"], help="attack templates and/or full prompts"
    )
    p.add_argument(
        "--eval-fraction",
        type=float,
        default=None,
        help=f"share held out for evaluation (default {SplitConfig.eval_fraction})",
    )
    p.add_argument("--max-per-class", type=int, default=None, help=f"default {SplitConfig.max_per_class}")
    p.add_argument(
        "--max-eval",
        type=int,
        default=None,
        help="cap on each held-out plain set (harmful, harmless, borderline; default: all of them)",
    )
    heldout_args(p)


def _checkpointing_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--activation-checkpointing",
        action="store_true",
        help="recompute each block's activations in the backward pass of LoRA training (the LoRA mode, the "
        "training-time baselines): less memory for about one more forward pass per step; same results",
    )


def add_parsers(sub) -> None:
    """Add `train`, `eval` and `verify`."""
    tr = sub.add_parser(
        "train", help="train the coupling: confined plane map (subspace) or the HARC LoRA objective"
    )
    model_args(tr)
    _data_args(tr)
    tr.add_argument("--directions", required=True, help="a `harc directions` output folder")
    tr.add_argument("--mode", choices=["subspace", "lora"], default="subspace")
    tr.add_argument("--out", required=True)
    tr.add_argument(
        "--steps", type=int, default=None, help="training steps (default: the mode's, subspace 1500, lora 60)"
    )
    tr.add_argument(
        "--lr", type=float, default=None, help="learning rate (default: the mode's, subspace 1e-2, lora 1e-4)"
    )
    for dest, _, text in SUBSPACE_FLAGS:
        kind = str if dest in ("slots", "read_slots") else int if dest == "response_tokens" else float
        tr.add_argument(
            f"--{dest.replace('_', '-')}", dest=dest, type=kind, default=None, help=f"subspace mode: {text}"
        )
    tr.add_argument(
        "--position-maps",
        action="store_true",
        help="subspace mode: one plane map per span token (t_inst, each template token, t_post) instead of one shared map",
    )
    tr.add_argument(
        "--span-context",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="subspace mode: t_post's and the response map also read the plane coordinates of the whole template span "
        "(default: on); --no-span-context gives one-token maps f(Uᵀh)",
    )
    _checkpointing_arg(tr)
    tr.set_defaults(func=cmd_train)

    ev = sub.add_parser(
        "eval", help="attack success per class, white-box suppression, over-refusal, KL -> eval.json"
    )
    model_args(ev)
    _data_args(ev)
    ev.add_argument("--directions", required=True)
    ev.add_argument("--intervention", default=None, help="a `harc train` output or a peft LoRA adapter")
    ev.add_argument(
        "--push-ref",
        type=float,
        default=None,
        help="instead of an intervention, add C x the raw v_ref at the attack slot, at t_inst..t_post and "
        "every response token, to every prompt: attack success is then the most a confined coupling there "
        "could restore (a perfectly selective one); over-refusal and KL are the cost of pushing everything",
    )
    ev.add_argument(
        "--attack-slot",
        type=int,
        default=None,
        help="white-box attacks ablate upstream of this slot (default: the first coupling slot, else the "
        "selected layer); use the same slot for every variant you compare",
    )
    ev.add_argument("--max-new-tokens", type=int, default=None, help=f"default {EvalConfig.max_new_tokens}")
    ev.add_argument(
        "--samples",
        type=int,
        default=None,
        help="also judge this many sampled responses per borderline and harmless prompt (the model's own "
        "sampling settings): over-refusal at a finer grain than one greedy answer each",
    )
    ev.add_argument("--sample-seed", type=int, default=None, help="seed for --samples")
    ev.add_argument(
        "--humaneval",
        type=int,
        default=None,
        metavar="N",
        help="also HumanEval pass@1 (greedy; tests run in a sandbox) on the first N problems (0: all 164), "
        "of the plain model and, with --intervention, of the intervened one",
    )
    judge_args(ev)
    ev.add_argument("--out", required=True)
    ev.set_defaults(func=cmd_eval)

    cmp = sub.add_parser(
        "compare",
        help="HARC beside the inference- and training-time baselines, the same held-out split and judge "
        "for all -> comparison.json, comparison.md",
    )
    model_args(cmp)
    _data_args(cmp)
    cmp.add_argument("--directions", required=True)
    cmp.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default=None,
        help="named settings; explicit flags override them. paper (GPU scale, with --device cuda --dtype "
        + "bfloat16): "
        + _preset_summary(PRESETS["paper"]),
    )
    cmp.add_argument(
        "--methods",
        default=None,
        help="comma-separated, from base, harc, actadd, cast, self_reminder, smoothllm and the training-time "
        "harc_lora (HARC's LoRA mode), sft, dpo, circuit_breakers, repbend (LoRA, minutes each on CPU; "
        "settings in the [lora] / [training] config sections; default: base, harc and the four "
        "inference-time ones)",
    )
    cmp.add_argument(
        "--coupling",
        default=None,
        help="HARC's coupling, trained on the same training split (default: trained here with the defaults)",
    )
    cmp.add_argument(
        "--max-new-tokens",
        type=int,
        default=None,
        help=f"evaluation answer length (default {EvalConfig.max_new_tokens}; the calibration keeps its own)",
    )
    cmp.add_argument(
        "--samples",
        type=int,
        default=None,
        help=f"sampled answers per safe prompt (default {_CMP.eval.samples})",
    )
    cmp.add_argument(
        "--humaneval",
        type=int,
        default=None,
        metavar="N",
        help="HumanEval problems per method (default 0: none)",
    )
    cmp.add_argument(
        "--adaptive",
        action="store_true",
        help="also attack every method with the same budgeted GCG, its defence active, on the first "
        "--adaptive-goals held-out harmful goals (budget: the [gcg] config section and --adaptive-steps); "
        "adaptive attack success beside the replayed one",
    )
    cmp.add_argument(
        "--adaptive-goals", type=positive_int, default=None, help=f"default {_CMP.adaptive_goals}"
    )
    cmp.add_argument("--adaptive-steps", type=positive_int, default=None, help="GCG steps per goal")
    _checkpointing_arg(cmp)
    judge_args(cmp)
    cmp.add_argument("--out", required=True)
    cmp.set_defaults(func=cmd_compare)

    ver = sub.add_parser(
        "verify", help="is an intervention's change confined to the harmfulness-refusal plane?"
    )
    model_args(ver)
    ver.add_argument("--directions", required=True)
    ver.add_argument("--intervention", required=True, help="a `harc train` output or a peft LoRA adapter")
    ver.add_argument("--harmful", nargs="+", default=["starter:harmful"])
    ver.add_argument("--harmless", nargs="+", default=["starter:harmless"])
    ver.add_argument("--limit", type=positive_int, default=16)
    ver.add_argument("--out", required=True)
    ver.set_defaults(func=cmd_verify)


def safety_sets(args, directions):
    """Train and eval prompt sets for `train` and `eval` (deterministic given --seed); with --heldout,
    without the prompts the directions were computed or selected on."""
    from ..data.prompts import PromptSet, load_prompts, safety_splits

    split = build_config(
        SplitConfig,
        "splits",
        args,
        {
            "eval_fraction": args.eval_fraction,
            "max_per_class": args.max_per_class,
            "max_eval": args.max_eval,
            "seed": args.seed,
        },
    )
    drop = directions.training_ids() if args.heldout else set()

    def plain(paths, label):
        ps = load_role(paths, label, None)
        kept = PromptSet(ps.name, tuple(p for p in ps.prompts if p.id not in drop))
        if len(kept) < 4:
            raise HarcError(f"only {len(kept)} {label} prompts left after --heldout; pass more prompts")
        return kept

    jb = [load_prompts(p) for p in args.jailbreaks]
    jailbreaks = jb[0]
    for more in jb[1:]:
        jailbreaks = jailbreaks + more
    if args.classes:
        jailbreaks = jailbreaks.attack_classes(c for c in args.classes.split(",") if c.strip())
    return safety_splits(
        plain(args.harmful, "harmful"),
        plain(args.harmless, "harmless"),
        plain(args.borderline, "safe"),
        jailbreaks,
        **dataclasses.asdict(split),
    )


def train_configs(args) -> SubspaceConfig | LoraConfig:
    """The mode's config: defaults, then --config/--set sections (the mode's and `train`), then flags."""
    flags = {field: getattr(args, dest) for dest, field, _ in SUBSPACE_FLAGS}
    flags |= {"slots": int_list(args.slots), "read_slots": int_list(args.read_slots)}
    flags |= {"position_maps": args.position_maps or None, "span_context": args.span_context}
    given = [f"--{k.replace('_', '-')}" for k, v in flags.items() if v is not None]
    if args.mode != "subspace" and given:
        raise HarcError(f"{', '.join(given)} only apply to --mode subspace")
    from ..coupling.loop import TrainConfig

    mode_default = (SubspaceConfig if args.mode == "subspace" else LoraConfig)().train
    loop_flags = {"steps": args.steps, "lr": args.lr, "seed": args.seed}
    train = build_config(TrainConfig, "train", args, loop_flags, base=mode_default)
    if args.mode == "subspace":
        flags |= {"batch_size": args.batch_size, "system_prompt": args.system_prompt}
        return build_config(SubspaceConfig, "subspace", args, flags, train=train)
    return build_config(LoraConfig, "lora", args, {"batch_size": args.batch_size}, train=train)


def cmd_train(args: argparse.Namespace) -> dict:
    """`harc train`: the coupling (--mode subspace) or the paper's LoRA objective (--mode lora) on the
    training split."""
    from ..artifacts import write_json
    from ..coupling.lora import train_lora
    from ..coupling.subspace import train_subspace

    config = train_configs(args)  # before loading anything: a bad flag costs nothing
    d = read_directions(args)
    train_sets, eval_sets = safety_sets(args, d)
    model = attach_model(args, d)
    # room for what training generates: the model's own response tokens, the calibration's answers
    reserve = (
        max(config.response_tokens, config.calibration_tokens if config.margin is None else 0)
        if isinstance(config, SubspaceConfig)
        else config.n_response
    )
    train_sets = {k: within_context(model, args, v, reserve=reserve) for k, v in train_sets.items()}
    out = Path(args.out)
    if isinstance(config, SubspaceConfig):
        train_subspace(model, d, train_sets, out, config, progress=not args.quiet)
    else:
        with activation_checkpointing(model, args.activation_checkpointing):
            train_lora(model, d, train_sets, out, config, progress=not args.quiet)
    splits = {
        "train": {k: v.ids for k, v in train_sets.items()},
        "eval": {k: v.ids for k, v in eval_sets.items()},
    }
    write_json(out / "splits.json", splits)
    return {"out": str(out), "mode": args.mode, "train_sizes": {k: len(v) for k, v in train_sets.items()}}


def _preset_summary(preset: ComparePreset) -> str:
    """What a preset sets, in flag terms (the --help text and the docs say the same)."""
    c = preset.config
    return (
        f"--max-new-tokens {c.eval.max_new_tokens}, --samples {c.eval.samples}, --batch-size "
        f"{c.eval.batch_size}, --humaneval {c.humaneval}, --max-per-class {preset.max_per_class}; steering "
        f"calibration on {c.calibration.max_per_group} validation rows per group with "
        f"{c.calibration.max_new_tokens}-token answers; SmoothLLM {c.smoothllm.n_copies} copies at "
        f"{c.smoothllm.rate:g} {c.smoothllm.kind}; training-time baselines LoRA r {c.training.r}, alpha "
        f"{c.training.alpha}, {c.training.train.steps} steps at lr {c.training.train.lr:g}; throughput "
        f"{c.throughput_prompts} prompts x {c.throughput_tokens} tokens"
    )


def compare_configs(args: argparse.Namespace) -> tuple[CompareConfig, int | None]:
    """(CompareConfig, the split's attack-class cap) of `harc compare`: the defaults or --preset's, then
    the [lora] and [training] config sections, then the flags given (--methods, --max-new-tokens,
    --samples, --batch-size, --humaneval, --adaptive, --max-per-class, --system-prompt)."""
    from dataclasses import replace

    preset = PRESETS[args.preset] if args.preset else ComparePreset(CompareConfig())
    base = preset.config
    given = {"max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size, "samples": args.samples}
    eval_config = replace(
        base.eval, **{k: v for k, v in given.items() if v is not None}, system_prompt=args.system_prompt
    )
    # The steering calibration answers with the same system prompt and batch size as the evaluation.
    calibration = replace(
        base.calibration,
        system_prompt=args.system_prompt,
        **({"batch_size": args.batch_size} if args.batch_size else {}),
    )
    changes = {
        "eval": eval_config,
        "calibration": calibration,
        # HARC's LoRA mode (harc_lora) and the training-time baselines: the [lora] / [training] sections
        "lora": build_config(LoraConfig, "lora", args, base=base.lora),
        "training": build_config(TrainingBaselineConfig, "training", args, base=base.training),
    }
    if args.methods is not None:
        changes["methods"] = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    if args.humaneval is not None:
        changes["humaneval"] = args.humaneval
    if args.adaptive:
        from ..attacks import GCGConfig

        changes["adaptive"] = build_config(GCGConfig, "gcg", args, {"steps": args.adaptive_steps})
    if args.adaptive_goals is not None:
        if not args.adaptive:
            raise HarcError("--adaptive-goals needs --adaptive")
        changes["adaptive_goals"] = args.adaptive_goals
    max_per_class = args.max_per_class if args.max_per_class is not None else preset.max_per_class
    return replace(base, **changes), max_per_class


def cmd_compare(args: argparse.Namespace) -> dict:
    """`harc compare`: every chosen method set up on the training split and judged on the held-out one;
    the trade-off figure (attack success vs over-refusal) beside the table."""
    from ..artifacts import write_text
    from ..evaluation.compare import compare_methods
    from ..report.figures import write_tradeoff_figure

    config, max_per_class = compare_configs(args)  # before loading anything: a bad flag costs nothing
    args = argparse.Namespace(**vars(args) | {"max_per_class": max_per_class})
    d = read_directions(args)
    train, ev = safety_sets(args, d)
    out = Path(args.out)
    judge, harm_judge = judges(args, out)
    model = attach_model(args, d)
    ev = {k: within_context(model, args, v, reserve=config.eval.max_new_tokens) for k, v in ev.items()}
    with activation_checkpointing(model, args.activation_checkpointing):
        result = compare_methods(
            model,
            d,
            train,
            ev,
            out,
            config,
            coupling_dir=args.coupling,
            judge=judge,
            harm_judge=harm_judge,
            progress=not args.quiet,
        )
    figures = write_tradeoff_figure(result, out)
    md = out / "comparison.md"
    links = ", ".join(f"[{p.suffix[1:].upper()}]({p.name})" for p in figures)
    write_text(md, md.read_text() + f"\nTrade-off figure (attack success vs over-refusal): {links}.\n")
    return {
        "comparison": str(md),
        "figures": [str(p) for p in figures],
        "methods": [r["method"] for r in result["methods"]],
        **({"preset": args.preset} if args.preset else {}),
    }


def cmd_eval(args: argparse.Namespace) -> dict:
    """`harc eval`: safety evaluation of the plain model, an intervention or a fixed v_ref push on the
    evaluation split."""
    from ..artifacts import stamp_schema, weights_digest, write_json
    from ..coupling.load import InterventionInfo, load_intervention
    from ..evaluation.safety import evaluate_safety
    from ..model.edits import Variant, addition_hooks

    if args.intervention and args.push_ref is not None:
        raise HarcError("--push-ref measures the plain model under a fixed push: drop --intervention")
    flags = {"max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size, "samples": args.samples}
    config = build_config(
        EvalConfig, "eval", args, flags | {"seed": args.sample_seed, "system_prompt": args.system_prompt}
    )
    info = InterventionInfo.read(args.intervention) if args.intervention else None
    d = read_directions(args)
    _, ev = safety_sets(args, d)
    judge, harm_judge = judges(args, Path(args.out))
    model = attach_model(args, d)
    ev = {k: within_context(model, args, v, reserve=config.max_new_tokens) for k, v in ev.items()}
    kwargs = dict(
        jailbreaks=ev["jailbreaks"],
        harmful=ev["harmful"],
        borderline=ev["borderline"],
        harmless=ev["harmless"],
        directions=d,
        judge=judge,
        harm_judge=harm_judge,
        config=config,
        responses_path=Path(args.out) / "responses.json",
        # An interrupted evaluation resumes from the groups it finished, if nothing it depends on changed.
        resume_dir=Path(args.out) / "groups",
        resume_key={
            "fingerprint": model.fingerprint,
            "config": dataclasses.asdict(config),
            "judges": [repr(judge), harm_judge.name if harm_judge else None],
            "weights": [weights_digest(p) for p in (args.directions, args.intervention) if p],
            "push_ref": args.push_ref,
            "attack_slot": args.attack_slot,
            "ids": {k: list(v.ids) for k, v in ev.items()},
        },
        progress=not args.quiet,
    )
    if args.push_ref is not None:
        slot = args.attack_slot if args.attack_slot is not None else d.selected_layer
        push = Variant(addition_hooks(model, d.raw("v_ref", slot), slot, args.push_ref, span_only=True))
        result = evaluate_safety(model, tuned=push, attack_slot=slot, **kwargs)
        result["push_ref"] = {"coefficient": args.push_ref, "slot": slot}
    elif info is not None:
        attack_slot = next(s for s in (args.attack_slot, info.attack_slot, d.selected_layer) if s is not None)
        with load_intervention(model, args.intervention) as (tuned, base):
            result = evaluate_safety(model, tuned=tuned, base=base, attack_slot=attack_slot, **kwargs)
            if args.humaneval is not None:
                result["humaneval"] = _humaneval(model, {"base": base, "tuned": tuned}, args)
        result["intervention"] = str(args.intervention)
    else:
        result = evaluate_safety(model, tuned=Variant(), attack_slot=args.attack_slot, **kwargs)
    if args.humaneval is not None and "humaneval" not in result:
        result["humaneval"] = _humaneval(model, {"base": Variant()}, args)
    write_json(Path(args.out) / "eval.json", stamp_schema(result, "eval", 1))
    return {
        "out": str(Path(args.out) / "eval.json"),
        "mean_asr": result["mean_asr"],
        "white_box_asr": result.get("white_box_asr"),
        "over_refusal": result["over_refusal"],
        **({"over_refusal_sampled": result["over_refusal_sampled"]} if config.samples else {}),
        "harmless_kl": result["harmless_kl"],
        "harmless_response_kl": result["harmless_response_kl"],
        **(
            {"humaneval_pass_at_1": {k: v["pass_at_1"] for k, v in result["humaneval"].items()}}
            if "humaneval" in result
            else {}
        ),
    }


def _humaneval(model, variants: dict, args) -> dict:
    """HumanEval pass@1 of each variant; every answer and verdict in `out/humaneval_<side>.json`."""
    from ..evaluation.humaneval import HumanEvalConfig, humaneval_pass_at_1

    config = HumanEvalConfig(limit=args.humaneval or None, system_prompt=args.system_prompt)
    return {
        side: humaneval_pass_at_1(
            model, v, config, Path(args.out) / f"humaneval_{side}.json", progress=not args.quiet
        )
        for side, v in variants.items()
    }


def cmd_verify(args: argparse.Namespace) -> dict:
    """`harc verify`: is the intervention's change confined to the plane (prompt and response tokens)?"""
    from ..artifacts import stamp_schema, write_json
    from ..coupling.load import InterventionInfo, load_intervention
    from ..evaluation.verify import confinement_report

    config = build_config(VerifyConfig, "verify", args, {"batch_size": args.batch_size})
    info = InterventionInfo.read(args.intervention)
    d = read_directions(args)
    prompts = {
        "harmful": load_role(args.harmful, "harmful", args.limit),
        "harmless": load_role(args.harmless, "harmless", args.limit),
    }
    model = attach_model(args, d)
    prompts = {k: within_context(model, args, v) for k, v in prompts.items()}
    with load_intervention(model, args.intervention) as (tuned, base):
        report = confinement_report(
            model,
            d,
            prompts,
            base=base,
            tuned=tuned,
            intervened_slots=info.edited_slots,
            progress=not args.quiet,
            **dataclasses.asdict(config),
        )
    write_json(Path(args.out) / "verify.json", stamp_schema(report, "verify", 2))
    return {
        "out": str(Path(args.out) / "verify.json"),
        "intervened_slots": list(info.edited_slots),
        "verdict": {k: report["verdict"][k] for k in ("confined", "tolerance", "checked_slots", "by_slot")},
        "confined_at_intervened": report["confined_at_intervened"],
        "max_rel_out_of_plane_at_intervened": report["max_rel_out_of_plane_at_intervened"],
        "summary": report["summary"],
        "harmless_kl": report.get("harmless_kl"),
    }
