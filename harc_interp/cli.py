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


def _load_role(paths: list[str], role: str, limit: int | None):
    """Prompt files as `role` prompts; rows whose own label says the opposite are left out, loudly."""
    from .prompts import as_role

    ps, dropped = as_role(_load_prompt_files(paths, None, None), role)
    if dropped:
        logging.getLogger(__name__).warning(
            "left %d rows of %s out of the %s prompts: their own label says otherwise (e.g. %s)",
            len(dropped),
            ", ".join(paths),
            role,
            dropped[0],
        )
    if not ps.prompts:
        raise HarcError(f"no {role} prompts in {', '.join(paths)}")
    return ps.sample(limit, seed=0) if limit else ps


def _int_list(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise HarcError(f"expected comma-separated layer slots, got {text!r}") from None


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
    from .artifacts import write_json, write_jsonl
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
    harmful = _load_role(args.harmful, "harmful", None)
    harmless = _load_role(args.harmless, "harmless", None)
    model = load_model(args.model, dtype=args.dtype, device=args.device)
    refusal_tokens = None
    if args.refusal_tokens:
        refusal_tokens = []
        for text in args.refusal_tokens.split(","):
            ids = model.tokenizer(text, add_special_tokens=False)["input_ids"]
            if len(ids) != 1:
                raise HarcError(f"refusal token {text!r} is {len(ids)} tokens for this tokenizer, not one")
            refusal_tokens.append(ids[0])
    d = extract_directions(
        model, harmful, harmless, args.out, config, refusal_tokens=refusal_tokens, progress=not args.quiet
    )
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

    harmful = _load_role(args.harmful, "harmful", None) if args.harmful else None
    harmless = _load_role(args.harmless, "harmless", None) if args.harmless else None
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


def _plane_prompts(args, directions):
    """Prompt files (plain sets, full jailbreak prompts, attack templates) → the plane's prompt set."""
    from .plane import directions_training_ids, study_prompts
    from .prompts import load_prompts

    sets = [load_prompts(p) for p in args.prompts]
    for item in args.exclude or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise HarcError(f"--exclude takes FIELD=VALUE (e.g. source=jbb), got {item!r}")
        sets = [s.exclude(**{key: value}) for s in sets]
    goals = load_prompts(args.goals) if args.goals else None
    classes = [c for c in args.classes.split(",") if c.strip()] if args.classes else None
    exclude_ids = directions_training_ids(directions) if args.heldout else ()
    return study_prompts(
        sets,
        goals=goals,
        n_goals=args.n_goals,
        per_class=args.per_class,
        classes=classes,
        exclude_ids=exclude_ids,
        seed=args.seed,
    )


def _load_with_directions(args):
    from .chat import formatter_for
    from .directions import Directions
    from .model import load_model

    model = load_model(args.model, dtype=args.dtype, device=args.device)
    d = Directions.load(
        args.directions, model=model, template_hash=formatter_for(model, args.system_prompt).template_hash
    )
    return model, d


def cmd_plane(args) -> dict:
    from .plane import PlaneConfig, run_plane

    model, d = _load_with_directions(args)
    ps = _plane_prompts(args, d)
    config = PlaneConfig(
        layer=args.layer,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        k=args.k,
        n_permutations=args.n_permutations,
        seed=args.seed,
        system_prompt=args.system_prompt,
    )
    result = run_plane(model, d, ps, args.out, config, progress=not args.quiet)
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


def cmd_trajectories(args) -> dict:
    from .trajectories import TrajectoryConfig, run_trajectories

    model, d = _load_with_directions(args)
    ps = _plane_prompts(args, d)
    config = TrajectoryConfig(
        layer=args.layer,
        max_new_tokens=args.max_new_tokens,
        n_tokens=args.n_tokens,
        reduce=args.reduce,
        quantile=args.quantile,
        batch_size=args.batch_size,
        system_prompt=args.system_prompt,
    )
    result = run_trajectories(model, d, ps, args.out, config, progress=not args.quiet)
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


def _plane_args(p: argparse.ArgumentParser, max_new_tokens: int) -> None:
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
    p.add_argument("--max-new-tokens", type=int, default=max_new_tokens)
    p.add_argument(
        "--goals", default=None, help="harmful goals to fill templates (default: the plain harmful)"
    )
    p.add_argument("--n-goals", type=int, default=8, help="goals per attack template")
    p.add_argument("--per-class", type=int, default=None, help="at most this many prompts per group")
    p.add_argument("--classes", default=None, help="comma-separated attack classes to keep (default: all)")
    p.add_argument(
        "--exclude",
        action="append",
        default=None,
        help="drop rows with FIELD=VALUE (repeatable), e.g. source=jbb",
    )
    p.add_argument(
        "--heldout",
        action="store_true",
        help="drop prompts (and goals) the directions were computed or selected on (the artifact's splits)",
    )
    p.add_argument("--seed", type=int, default=0)


def _safety_sets(args, directions):
    """Train and eval prompt sets for `train` and `eval` (deterministic given --seed); with --heldout,
    without the prompts the directions were computed or selected on."""
    from .plane import directions_training_ids
    from .prompts import PromptSet, load_prompts, safety_splits

    drop = directions_training_ids(directions) if args.heldout else set()

    def plain(paths, label):
        ps = _load_role(paths, label, None)
        kept = PromptSet(ps.name, tuple(p for p in ps.prompts if p.id not in drop))
        if len(kept) < 4:
            raise HarcError(f"only {len(kept)} {label} prompts left after --heldout; pass more prompts")
        return kept

    harmful = plain(args.harmful, "harmful")
    harmless = plain(args.harmless, "harmless")
    borderline = plain(args.borderline, "safe")
    jb = [load_prompts(p) for p in args.jailbreaks]
    jailbreaks = jb[0]
    for more in jb[1:]:
        jailbreaks = jailbreaks + more
    if args.classes:
        jailbreaks = jailbreaks.attack_classes(c for c in args.classes.split(",") if c.strip())
    return safety_splits(
        harmful,
        harmless,
        borderline,
        jailbreaks,
        eval_fraction=args.eval_fraction,
        max_per_class=args.max_per_class,
        seed=args.seed,
    )


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
        "--eval-fraction", type=float, default=0.5, help="share of each set held out for evaluation"
    )
    p.add_argument("--max-per-class", type=int, default=16)
    p.add_argument("--classes", default=None, help="comma-separated attack classes to keep (default: all)")
    p.add_argument(
        "--heldout",
        action="store_true",
        help="drop prompts (and goals) the directions were computed or selected on (the artifact's splits)",
    )
    p.add_argument("--seed", type=int, default=0)


def cmd_train(args) -> dict:
    from .artifacts import write_json
    from .train import TrainConfig

    # SubspaceConfig fields the command line sets only when given (None: keep the config's default).
    overrides = {
        "retention_weight": args.retention_weight,
        "margin": args.margin,
        "plain_margin": args.plain_margin,
        "safe_raise_weight": args.safe_raise_weight,
        "position_maps": args.position_maps or None,
        "response_tokens": args.response_tokens,
        "response_margin": args.response_margin,
        "plain_response_margin": args.plain_response_margin,
        "span_context": args.span_context,
        "validation_fraction": args.validation_fraction,
        "read_slots": _int_list(args.read_slots),
    }
    overrides = {k: v for k, v in overrides.items() if v is not None}
    given = [f"--{k.replace('_', '-')}" for k in overrides]
    if args.slots is not None:
        given.insert(0, "--slots")
    if args.mode != "subspace" and given:
        raise HarcError(f"{', '.join(given)} only apply to --mode subspace")
    model, d = _load_with_directions(args)
    train_sets, eval_sets = _safety_sets(args, d)
    out = Path(args.out)
    slots = _int_list(args.slots)
    if args.mode == "subspace":
        from .subspace import SubspaceConfig, train_subspace

        tc = TrainConfig(
            steps=args.steps or 1500, lr=args.lr or 1e-2, seed=args.seed, checkpoint_every=250, log_every=50
        )
        train_subspace(
            model,
            d,
            train_sets,
            out,
            SubspaceConfig(
                slots=slots,
                train=tc,
                system_prompt=args.system_prompt,
                **overrides,
            ),
            progress=not args.quiet,
        )
    else:
        from .lora import LoraConfig, train_lora

        tc = TrainConfig(
            steps=args.steps or 60,
            lr=args.lr or 1e-4,
            warmup_steps=10,
            seed=args.seed,
            checkpoint_every=10,
            log_every=5,
        )
        train_lora(model, d, train_sets, out, LoraConfig(train=tc), progress=not args.quiet)
    write_json(
        out / "splits.json",
        {
            "train": {k: v.ids for k, v in train_sets.items()},
            "eval": {k: v.ids for k, v in eval_sets.items()},
        },
    )
    return {"out": str(out), "mode": args.mode, "train_sizes": {k: len(v) for k, v in train_sets.items()}}


def _intervention_meta(path: str) -> dict:
    """`coupling.json` of a `harc train` output; empty for a bare peft adapter folder."""
    from .artifacts import read_json

    meta_path = Path(path) / "coupling.json"
    return read_json(meta_path) if meta_path.is_file() else {}


def cmd_eval(args) -> dict:
    from .artifacts import write_json
    from .evaluate import evaluate_safety
    from .interventions import Variant, load_intervention

    if args.intervention and args.push_ref is not None:
        raise HarcError("--push-ref measures the plain model under a fixed push: drop --intervention")
    model, d = _load_with_directions(args)
    _, ev = _safety_sets(args, d)
    kwargs = dict(
        jailbreaks=ev["jailbreaks"],
        harmful=ev["harmful"],
        borderline=ev["borderline"],
        harmless=ev["harmless"],
        directions=d,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        samples=args.samples,
        seed=args.sample_seed,
        system_prompt=args.system_prompt,
        responses_path=Path(args.out) / "responses.json",
        progress=not args.quiet,
    )
    if args.push_ref is not None:
        from .interventions import addition_hooks

        slot = args.attack_slot if args.attack_slot is not None else d.selected_layer
        push = Variant(addition_hooks(model, d.raw("v_ref", slot), slot, args.push_ref, span_only=True))
        result = evaluate_safety(model, tuned=push, attack_slot=slot, **kwargs)
        result["push_ref"] = {"coefficient": args.push_ref, "slot": slot}
    elif args.intervention:
        meta = _intervention_meta(args.intervention)
        slot = meta.get("slots") or meta.get("final_slots") or [d.selected_layer]
        with load_intervention(model, args.intervention) as (tuned, base):
            attack_slot = args.attack_slot if args.attack_slot is not None else min(slot)
            result = evaluate_safety(model, tuned=tuned, base=base, attack_slot=attack_slot, **kwargs)
        result["intervention"] = str(args.intervention)
    else:
        result = evaluate_safety(model, tuned=Variant(), attack_slot=args.attack_slot, **kwargs)
    write_json(Path(args.out) / "eval.json", result)
    return {
        "out": str(Path(args.out) / "eval.json"),
        "mean_asr": result["mean_asr"],
        "white_box_asr": result.get("white_box_asr"),
        "over_refusal": result["over_refusal"],
        **({"over_refusal_sampled": result["over_refusal_sampled"]} if args.samples else {}),
        "harmless_kl": result["harmless_kl"],
        "harmless_response_kl": result["harmless_response_kl"],
    }


def cmd_verify(args) -> dict:
    from .artifacts import write_json
    from .interventions import load_intervention
    from .verify import confinement_report

    model, d = _load_with_directions(args)
    prompts = {
        "harmful": _load_role(args.harmful, "harmful", args.limit),
        "harmless": _load_role(args.harmless, "harmless", args.limit),
    }
    intervened = (
        _intervention_meta(args.intervention).get("slots") or []
    )  # the LoRA mode touches every layer: no slot is "the" intervened one
    with load_intervention(model, args.intervention) as (tuned, base):
        report = confinement_report(
            model,
            d,
            prompts,
            base=base,
            tuned=tuned,
            intervened_slots=intervened,
            batch_size=args.batch_size,
            progress=not args.quiet,
        )
    write_json(Path(args.out) / "verify.json", report)
    return {
        "out": str(Path(args.out) / "verify.json"),
        "intervened_slots": intervened,
        "confined_at_intervened": report["confined_at_intervened"],
        "max_rel_out_of_plane_at_intervened": report["max_rel_out_of_plane_at_intervened"],
        "summary": report["summary"],
        "harmless_kl": report.get("harmless_kl"),
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

    dirs = sub.add_parser(
        "directions",
        help="v_harm, v_ref and response directions, probes, selection, causal checks -> OUT/directions.*",
    )
    _model_args(dirs)
    dirs.add_argument(
        "--harmful", nargs="+", required=True, help="harmful prompt files, starter:harmful, hf:..."
    )
    dirs.add_argument(
        "--harmless", nargs="+", required=True, help="harmless prompt files, starter:harmless, ..."
    )
    dirs.add_argument("--out", required=True)
    dirs.add_argument("--n-train", type=int, default=128, help="prompts per class before filtering")
    dirs.add_argument("--n-val", type=int, default=16, help="prompts per class for selection")
    dirs.add_argument("--n-test", type=int, default=32, help="held-out prompts per class")
    dirs.add_argument("--no-filter", action="store_true", help="keep every training prompt, refused or not")
    dirs.add_argument("--max-new-tokens", type=int, default=32, help="generation length for filtering")
    dirs.add_argument(
        "--n-response", type=int, default=32, help="response tokens pooled by response directions"
    )
    dirs.add_argument("--selection", choices=["arditi", "harc"], default="arditi")
    dirs.add_argument(
        "--selection-positions",
        default="t_post",
        help="comma-separated grid positions (t_post, post_0, post_1, ...; Arditi et al. search every "
        "post-instruction token); the causal checks test the picked position's direction",
    )
    dirs.add_argument("--selection-slots", default=None, help="comma-separated slots (default: all)")
    dirs.add_argument("--n-bootstrap", type=int, default=200)
    dirs.add_argument("--eval-max-new-tokens", type=int, default=24)
    dirs.add_argument(
        "--refusal-tokens",
        default=None,
        help="comma-separated refusal-start tokens, e.g. 'I,As' (default: found from the model's refusals)",
    )
    dirs.add_argument("--seed", type=int, default=0)
    dirs.set_defaults(func=cmd_directions)

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

    plane = sub.add_parser(
        "plane", help="attack classes on the harmfulness-refusal plane: coords.jsonl, geometry.json, figures"
    )
    _model_args(plane)
    _plane_args(plane, max_new_tokens=32)
    plane.add_argument("--k", type=float, default=1.0, help="suppression threshold in plain-harmful stds")
    plane.add_argument("--n-permutations", type=int, default=100, help="for the separability p-value")
    plane.set_defaults(func=cmd_plane)

    traj = sub.add_parser(
        "trajectories",
        help="response tokens on the response-side directions: trajectories.jsonl, summary.json",
    )
    _model_args(traj)
    _plane_args(traj, max_new_tokens=32)
    traj.add_argument("--n-tokens", type=int, default=32, help="response tokens pooled by the score")
    traj.add_argument("--reduce", default="mean", choices=["mean", "max"])
    traj.add_argument(
        "--quantile", type=float, default=0.95, help="of helpful harmless scores: the threshold"
    )
    traj.set_defaults(func=cmd_trajectories)
    tr = sub.add_parser(
        "train", help="train the coupling: confined plane map (subspace) or the HARC LoRA objective"
    )
    _model_args(tr)
    _data_args(tr)
    tr.add_argument("--directions", required=True, help="a `harc directions` output folder")
    tr.add_argument("--mode", choices=["subspace", "lora"], default="subspace")
    tr.add_argument("--out", required=True)
    tr.add_argument(
        "--slots", default=None, help="coupling layer slots (subspace mode; default: the selected layer)"
    )
    tr.add_argument("--steps", type=int, default=None)
    tr.add_argument("--lr", type=float, default=None)
    tr.add_argument(
        "--retention-weight",
        type=float,
        default=None,
        help="subspace mode: weight of keeping harmless and borderline plane coordinates unchanged",
    )
    tr.add_argument(
        "--margin",
        type=float,
        default=None,
        help="subspace mode: where harmful-like prompts must reach on each axis, as a multiple of the "
        "harmful mean (harmless mean = 0; default 0.8; above 1 pushes past the average harmful prompt)",
    )
    tr.add_argument(
        "--plain-margin",
        type=float,
        default=None,
        help="subspace mode: the margin for plain harmful prompts (default: --margin); the model mostly "
        "refuses them already, and pushing them hard lifts the borderline prompts next to them",
    )
    tr.add_argument(
        "--plain-response-margin",
        type=float,
        default=None,
        help="subspace mode: the response margin for plain harmful prompts (default: --response-margin); "
        "0 only keeps their responses' refusal from falling (pushing them lifted borderline responses)",
    )
    tr.add_argument(
        "--safe-raise-weight",
        type=float,
        default=None,
        help="subspace mode: cost per gap of raising a harmless or borderline prompt's refusal read-out "
        "at all (default 0: only rises above the safe margin cost, besides retention)",
    )
    tr.add_argument(
        "--position-maps",
        action="store_true",
        help="subspace mode: one plane map per span token (t_inst, each template token, t_post) "
        "instead of one shared map; with the span context each reads the span up to itself",
    )
    tr.add_argument(
        "--response-tokens",
        type=int,
        default=None,
        help="subspace mode: train the response-token map on the model's first N response tokens per "
        "prompt (default 8; 0: responses use t_post's map)",
    )
    tr.add_argument(
        "--response-margin",
        type=float,
        default=None,
        help="subspace mode: how far harmful-like responses' refusal read-out is pushed above harmless "
        "responses', in t_post harmful-harmless gaps (default 1.0)",
    )
    tr.add_argument(
        "--span-context",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="subspace mode: t_post's and the response map also read the plane coordinates of the whole "
        "template span (t_inst ... t_post), the other span tokens are left unedited (default: on); "
        "--no-span-context gives one-token maps f(Uᵀh)",
    )
    tr.add_argument(
        "--read-slots",
        default=None,
        help="subspace mode with the span context: earlier slots (e.g. 6,10) whose span plane coordinates "
        "the maps also read; the edit stays at --slots",
    )
    tr.add_argument(
        "--validation-fraction",
        type=float,
        default=None,
        help="subspace mode: share of the training prompts held out of training; train_summary.json "
        "reports the objective and refusal read-outs on them (default 0)",
    )
    tr.set_defaults(func=cmd_train)

    ev = sub.add_parser(
        "eval", help="attack success per class, white-box suppression, over-refusal, KL -> eval.json"
    )
    _model_args(ev)
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
    ev.add_argument("--max-new-tokens", type=int, default=24)
    ev.add_argument(
        "--samples",
        type=int,
        default=0,
        help="also judge this many sampled responses per borderline and harmless prompt (the model's own "
        "sampling settings): over-refusal at a finer grain than one greedy answer each",
    )
    ev.add_argument("--sample-seed", type=int, default=0, help="seed for --samples")
    ev.add_argument("--out", required=True)
    ev.set_defaults(func=cmd_eval)

    ver = sub.add_parser(
        "verify", help="is an intervention's change confined to the harmfulness-refusal plane?"
    )
    _model_args(ver)
    ver.add_argument("--directions", required=True)
    ver.add_argument("--intervention", required=True, help="a `harc train` output or a peft LoRA adapter")
    ver.add_argument("--harmful", nargs="+", default=["starter:harmful"])
    ver.add_argument("--harmless", nargs="+", default=["starter:harmless"])
    ver.add_argument("--limit", type=int, default=16)
    ver.add_argument("--out", required=True)
    ver.set_defaults(func=cmd_verify)
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
