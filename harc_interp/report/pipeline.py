"""Chains the stages into the main job, one per claim: directions → the plane with attack classes → the
confined coupling with its calibrated defaults, evaluated base vs coupled on held-out prompts and
verified → figures, summary and report."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from ..artifacts import cached_json, now, provenance, stamp_schema, versions, write_json
from ..capture.judges import DEFAULT_JUDGE, Judge
from ..capture.model_judge import ModelJudge
from ..coupling.load import load_intervention
from ..coupling.maps import CouplingIntervention
from ..coupling.subspace import SubspaceConfig, train_subspace
from ..data.prompts import PromptSet, safety_splits, starter_prompts
from ..directions.artifact import Directions
from ..directions.stage import DirectionsConfig, extract_directions
from ..evaluation.safety import EvalConfig, evaluate_safety
from ..evaluation.verify import confinement_report
from ..model.hooked import HarcModel, load_model
from ..model.offline import DEFAULT_MODEL
from ..plane.stage import PlaneConfig, PlaneResult, run_plane
from ..plane.study import study_prompts
from .figures import write_directions_figures, write_plane_figures
from .html import coupling_section, directions_section, plane_section, write_report


def run_main(
    model: str | HarcModel = DEFAULT_MODEL,
    out_dir: str | Path = "runs/main",
    *,
    harmful: PromptSet | None = None,
    harmless: PromptSet | None = None,
    directions_config: DirectionsConfig | None = None,
    judge: Judge = DEFAULT_JUDGE,
    harm_judge: ModelJudge | None = None,
    refusal_tokens: Sequence[int] | None = None,
    batch_size: int = 16,
    dtype: str = "float32",
    device: str = "cpu",
    coupling: bool = True,
    coupling_config: SubspaceConfig | None = None,
    progress: bool = True,
) -> dict:
    """The main job: directions (with probes, selection and causal checks) from the training half of
    the harmful and harmless prompts (default: the built-in starter sets; `safety_splits` keeps the other
    half for the coupling's evaluation, which no stage reads before it), the plane with plain, borderline
    and attack prompts not used for the directions, with `coupling` the confined coupling
    (`run_coupling`; its settings `coupling_config`, default `SubspaceConfig` with `batch_size`; with
    `harm_judge`, its attack success is judged harmful compliance), `summary.json` and `report.html`.
    Resumable: a rerun with the same settings reuses every finished stage."""
    out_dir = Path(out_dir)
    start = time.perf_counter()
    m = load_model(model, dtype=dtype, device=device, progress=progress) if isinstance(model, str) else model
    harmful = harmful if harmful is not None else starter_prompts("harmful")
    harmless = harmless if harmless is not None else starter_prompts("harmless")
    sets = (harmful, harmless, starter_prompts("borderline"), starter_prompts("attacks"))
    train, held_out = safety_splits(*sets, max_per_class=8)
    config = directions_config or main_directions_config(batch_size)
    timings = {"load": time.perf_counter() - start}

    t = time.perf_counter()
    d = extract_directions(
        m,
        train["harmful"],
        train["harmless"],
        out_dir / "directions",
        config,
        judge=judge,
        refusal_tokens=refusal_tokens,
        progress=progress,
    )
    write_directions_figures(d, out_dir / "directions")
    timings["directions"] = time.perf_counter() - t

    t = time.perf_counter()
    study = study_prompts(
        list(sets),
        n_goals=6,
        per_class=12,
        exclude_ids=d.training_ids(),
        seed=config.seed,
    )
    plane_config = PlaneConfig(max_new_tokens=24, batch_size=batch_size)
    plane = run_plane(m, d, study, out_dir / "plane", plane_config, judge=judge, progress=progress)
    write_plane_figures(plane, out_dir / "plane", d)
    timings["plane"] = time.perf_counter() - t
    coupled = None
    if coupling:
        t = time.perf_counter()
        config = coupling_config or SubspaceConfig(batch_size=batch_size)
        coupled = run_coupling(
            m,
            d,
            train,
            held_out,
            out_dir,
            judge=judge,
            harm_judge=harm_judge,
            config=config,
            progress=progress,
        )
        timings["coupling"] = time.perf_counter() - t
    summary = main_summary(m, d, plane, out_dir, timings)
    if coupled is not None:
        summary["coupling"] = coupled
        summary["artifacts"]["coupling"] = str(out_dir / "coupling")
    write_json(out_dir / "summary.json", stamp_schema(summary, "main_summary", 1))
    geometry = plane.geometry["oblique"].to_dict()
    sections = [directions_section(out_dir, d), plane_section(out_dir, geometry)]
    if coupled is not None:
        sections.append(coupling_section(coupled))
    write_report(out_dir, summary, sections)
    return summary


def main_directions_config(batch_size: int = 16) -> DirectionsConfig:
    """The main job's directions settings, sized for the training half of the 48 starter prompts per
    class: 16 train, 4 for selection, 4 for probes and causal checks."""
    return DirectionsConfig(n_train=16, n_val=4, n_test=4, batch_size=batch_size)


def run_coupling(
    model: HarcModel,
    d: Directions,
    train: dict[str, PromptSet],
    held_out: dict[str, PromptSet],
    out_dir: Path,
    *,
    judge: Judge = DEFAULT_JUDGE,
    harm_judge: ModelJudge | None = None,
    config: SubspaceConfig | None = None,
    samples: int = 4,
    progress: bool = True,
) -> dict:
    """The fourth claim: the confined coupling with its defaults only (slots by relative depth, margin
    calibrated on validation rows of the `train` split), trained in `out_dir/coupling`; the plain and
    the coupled model evaluated on the `held_out` split (`out_dir/eval/{base,coupled}.json`, every judged
    response beside them), and `harc verify`'s check at prompt and response tokens
    (`out_dir/verify.json`). Each step is cached, so a rerun resumes. Returns the report's numbers."""
    config = config or SubspaceConfig()
    trained = train_subspace(model, d, train, out_dir / "coupling", config, progress=progress)
    slot, weights = trained.slots[0], trained.weights_digest()
    batch_size = config.batch_size
    # The every-layer white-box limits are skipped: no in-plane defence can undo them, and the report
    # does not show them (48 answers fewer per side).
    eval_config = EvalConfig(batch_size=batch_size, samples=samples, white_box_limits=False)
    key = {"fingerprint": model.fingerprint, "eval": held_out_ids(held_out), "config": asdict(eval_config)}
    judged_by = (
        {"harm_judge": harm_judge.name} if harm_judge else {}
    )  # absent by default: old caches stay valid
    # the base side depends on the coupling only through the white-box attacks' slot
    side_keys = {
        side: key
        | {"side": side}
        | ({"coupling": weights} if side == "coupled" else {"slot": slot})
        | judged_by
        for side in ("base", "coupled")
    }
    with load_intervention(model, out_dir / "coupling") as (tuned, base):
        results = {
            side: cached_json(
                out_dir / "eval" / f"{side}.json",
                lambda variant=variant, side=side: evaluate_safety(
                    model,
                    **held_out,
                    directions=d,
                    attack_slot=slot,  # the same white-box attacks for both sides
                    tuned=variant,
                    base=base,
                    judge=judge,
                    harm_judge=harm_judge,
                    config=eval_config,
                    responses_path=out_dir / "eval" / f"responses_{side}.json",
                    resume_dir=out_dir / "eval" / f"groups_{side}",  # an interrupted evaluation resumes
                    resume_key=side_keys[side],
                    progress=progress,
                ),
                key=side_keys[side],
            )
            for side, variant in (("base", base), ("coupled", tuned))
        }
        verify = cached_json(
            out_dir / "verify.json",
            lambda: confinement_report(
                model,
                d,
                {"harmful": held_out["harmful"], "harmless": held_out["harmless"]},
                base=base,
                tuned=tuned,
                intervened_slots=trained.slots,
                n_null=50,
                batch_size=batch_size,
                progress=progress,
            ),
            key=key | {"coupling": weights},
        )
    return coupling_summary(trained, results, verify)


def held_out_ids(sets: dict[str, PromptSet]) -> dict[str, list[str]]:
    """Prompt ids per held-out set (the evaluation cache's key)."""
    return {name: list(ps.ids) for name, ps in sets.items()}


def coupling_summary(coupling: CouplingIntervention, results: dict[str, dict], verify: dict) -> dict:
    """What the report shows of the coupling: the calibrated choices, base vs coupled, the verdict."""
    rows = {}
    for side, r in results.items():
        wb = r.get("white_box_asr", {})
        rows[side] = {
            "mean_asr": r["mean_asr"],
            "asr_by_class": r["asr_by_class"],
            "plain_harmful_asr": r["plain_harmful_asr"],
            "v_ref_ablated_upstream_asr": wb.get("v_ref_ablated_upstream"),
            "v_harm_ablated_upstream_asr": wb.get("v_harm_ablated_upstream"),
            "over_refusal": r["over_refusal"],
            "over_refusal_sampled": r.get("over_refusal_sampled"),
            "harmless_refusal": r["harmless_refusal"],
            "harmless_kl": r["harmless_kl"],
            "harmless_response_kl": r["harmless_response_kl"],
        }
    verdict = verify["verdict"]
    return {
        "slots": list(coupling.slots),
        "read_slots": list(coupling.read_slots),
        "margin": coupling.meta["margin"],
        "calibration": coupling.meta["calibration"],
        "n_eval": results["coupled"]["n"],
        "base": rows["base"],
        "coupled": rows["coupled"],
        "verify": {k: verdict[k] for k in ("confined", "tolerance", "checked_slots", "by_slot")},
    }


def main_summary(model: HarcModel, d: Directions, plane: PlaneResult, out_dir: Path, timings: dict) -> dict:
    """summary.json of the main job: what each stage found, how long it took, where its artifacts are."""
    geometry = plane.geometry["oblique"].to_dict()
    return {
        "model": model.name,
        "model_fingerprint": model.fingerprint,
        "n_layers": model.n_layers,
        "d_model": model.d_model,
        "directions": {
            "selected_layer": d.selected_layer,
            "selection_method": d.selection.method,
            "best_harm_layer": d.metrics["best_harm_layer"],
            "best_harm_layer_probe": d.metrics["best_harm_layer_probe"],
            "refusal_tokens": d.refusal_token_strings,
            "causal_validation": d.causal_validation,
        },
        "plane": {
            "slot": plane.slot,
            "groups": {
                name: {"n": c["n"], "suppresses": c["suppresses"], "complied": c["compliance_rate"]}
                for name, c in geometry["classes"].items()
            },
            "separability": geometry["separability"],
        },
        "seconds": {k: round(v, 1) for k, v in timings.items()},
        "artifacts": {
            "directions": str(out_dir / "directions"),
            "plane": str(out_dir / "plane"),
            "report": str(out_dir / "report.html"),
        },
        "created": now(),
        "versions": versions(),
        "provenance": provenance(model),
    }
