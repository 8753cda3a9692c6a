"""`harc plane` and `harc trajectories`: attack classes on the plane, response tokens on the
response-side directions."""

from __future__ import annotations

import argparse

from ..errors import HarcError
from ..plane.stage import PlaneConfig
from ..plane.trajectories import TrajectoryConfig
from .common import (
    attach_model,
    build_config,
    heldout_args,
    model_args,
    positive_int,
    read_directions,
    within_context,
)


def _plane_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--directions", required=True, help="a Directions artifact directory (harc directions)")
    p.add_argument(
        "--prompts",
        nargs="+",
        required=True,
        help="plain sets (label), jailbreak files (attack_class; full prompts and templates), starter:KIND",
    )
    p.add_argument("--out", required=True)
    p.add_argument(
        "--layer", type=int, default=None, help="layer slot (default: the artifact's selected layer)"
    )
    p.add_argument(
        "--max-new-tokens", type=int, default=None, help="generated tokens judged for compliance (default 32)"
    )
    p.add_argument(
        "--goals", default=None, help="harmful goals to fill templates (default: the plain harmful)"
    )
    p.add_argument("--n-goals", type=positive_int, default=8, help="goals per attack template")
    p.add_argument("--per-class", type=positive_int, default=None, help="at most this many prompts per group")
    p.add_argument(
        "--exclude",
        action="append",
        default=None,
        help="drop rows with FIELD=VALUE (repeatable), e.g. source=jbb",
    )
    heldout_args(p)


def add_parsers(sub) -> None:
    """Add `plane` and `trajectories`."""
    plane = sub.add_parser(
        "plane", help="attack classes on the harmfulness-refusal plane: coords.jsonl, geometry.json, figures"
    )
    model_args(plane)
    _plane_args(plane)
    plane.add_argument(
        "--k",
        type=float,
        default=None,
        help=f"suppression threshold in plain-harmful stds (default {PlaneConfig.k})",
    )
    plane.add_argument(
        "--n-permutations",
        type=int,
        default=None,
        help=f"for the separability p-value (default {PlaneConfig.n_permutations})",
    )
    plane.set_defaults(func=cmd_plane)

    traj = sub.add_parser(
        "trajectories",
        help="response tokens on the response-side directions: trajectories.jsonl, summary.json",
    )
    model_args(traj)
    _plane_args(traj)
    traj.add_argument(
        "--n-tokens",
        type=int,
        default=None,
        help=f"response tokens pooled by the score (default {TrajectoryConfig.n_tokens})",
    )
    traj.add_argument("--reduce", default=None, choices=["mean", "max"])
    traj.add_argument(
        "--quantile",
        type=float,
        default=None,
        help=f"of helpful harmless scores: the threshold (default {TrajectoryConfig.quantile})",
    )
    traj.set_defaults(func=cmd_trajectories)


def plane_prompts(args, directions):
    """Prompt files (plain sets, full jailbreak prompts, attack templates) → the plane's prompt set."""
    from ..data.prompts import load_prompts
    from ..plane.study import study_prompts

    sets = [load_prompts(p) for p in args.prompts]
    for item in args.exclude or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise HarcError(f"--exclude takes FIELD=VALUE (e.g. source=jbb), got {item!r}")
        sets = [s.exclude(**{key: value}) for s in sets]
    goals = load_prompts(args.goals) if args.goals else None
    classes = [c for c in args.classes.split(",") if c.strip()] if args.classes else None
    return study_prompts(
        sets,
        goals=goals,
        n_goals=args.n_goals,
        per_class=args.per_class,
        classes=classes,
        exclude_ids=directions.training_ids() if args.heldout else (),
        seed=args.seed or 0,
    )


def _common_flags(args) -> dict:
    return {
        "layer": args.layer,
        "max_new_tokens": args.max_new_tokens,
        "batch_size": args.batch_size,
        "system_prompt": args.system_prompt,
    }


def cmd_plane(args: argparse.Namespace) -> dict:
    """`harc plane`: attack classes on the plane at one slot, with figures."""
    from ..plane.stage import run_plane
    from ..report.figures import write_plane_figures

    flags = _common_flags(args) | {"k": args.k, "n_permutations": args.n_permutations, "seed": args.seed}
    config = build_config(PlaneConfig, "plane", args, flags)
    d = read_directions(args)
    ps = plane_prompts(args, d)
    model = attach_model(args, d)
    ps = within_context(model, args, ps)
    result = run_plane(model, d, ps, args.out, config, progress=not args.quiet)
    write_plane_figures(result, args.out, d)
    geo = result.geometry["oblique"]
    return {
        "out": str(args.out),
        "slot": result.slot,
        "n_prompts": len(ps),
        "cos_harm_ref": round(result.meta["cos_harm_ref"], 4),
        "classes": {
            c.name: {
                "n": c.n,
                "displacement_z": [round(z, 2) for z in c.displacement_z],
                "suppresses": c.suppresses,
                "compliance_rate": None if c.compliance_rate is None else round(c.compliance_rate, 3),
            }
            for c in geo.classes
        },
        "separability": {
            k: geo.separability.get(k)
            for k in ("accuracy", "chance_accuracy", "balanced_accuracy", "p_value")
        },
        "skipped_slots": sorted(result.skipped),
    }


def cmd_trajectories(args: argparse.Namespace) -> dict:
    """`harc trajectories`: response trajectories on the response-side directions."""
    from ..plane.trajectories import run_trajectories
    from ..report.figures import write_trajectory_figures

    flags = _common_flags(args) | {
        "n_tokens": args.n_tokens,
        "reduce": args.reduce,
        "quantile": args.quantile,
    }
    config = build_config(TrajectoryConfig, "trajectories", args, flags)
    d = read_directions(args)
    ps = plane_prompts(args, d)
    model = attach_model(args, d)
    ps = within_context(model, args, ps)
    result = run_trajectories(model, d, ps, args.out, config, progress=not args.quiet)
    write_trajectory_figures(result, args.out, model.name)
    keys = ("n", "complied_rate", "prompt_flagged_rate", "response_flagged_rate", "late_recognition_rate")
    return {
        "out": str(args.out),
        "slot": result.slot,
        "thresholds": {k: v for k, v in result.summary["thresholds"].items() if not k.endswith("rule")},
        "groups": {
            g: {k: None if s[k] is None else round(s[k], 3) for k in keys}
            for g, s in result.summary["groups"].items()
        },
    }
