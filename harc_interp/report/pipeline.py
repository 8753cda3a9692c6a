"""Chains the stages into the main job: directions → the plane with attack classes → figures, summary
and report. Later stages (coupling, verification, evaluation) plug in here as they land."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from ..artifacts import now, provenance, stamp_schema, versions, write_json
from ..capture.judges import DEFAULT_JUDGE, Judge
from ..data.prompts import PromptSet, starter_prompts
from ..directions.artifact import Directions
from ..directions.stage import DirectionsConfig, extract_directions
from ..model.hooked import HarcModel, load_model
from ..model.offline import DEFAULT_MODEL
from ..plane.stage import PlaneConfig, PlaneResult, run_plane
from ..plane.study import study_prompts
from .figures import write_directions_figures, write_plane_figures
from .html import directions_section, plane_section, write_report


def run_main(
    model: str | HarcModel = DEFAULT_MODEL,
    out_dir: str | Path = "runs/main",
    *,
    harmful: PromptSet | None = None,
    harmless: PromptSet | None = None,
    directions_config: DirectionsConfig | None = None,
    judge: Judge = DEFAULT_JUDGE,
    refusal_tokens: Sequence[int] | None = None,
    batch_size: int = 16,
    dtype: str = "float32",
    device: str = "cpu",
    progress: bool = True,
) -> dict:
    """The main job: directions (with probes, selection and causal checks) from the harmful and
    harmless prompts (default: the built-in starter sets), the plane with plain, borderline and attack
    prompts not used for the directions, `summary.json` and `report.html`. Resumable: rerunning with
    the same settings reuses the finished directions stage."""
    out_dir = Path(out_dir)
    start = time.perf_counter()
    m = load_model(model, dtype=dtype, device=device, progress=progress) if isinstance(model, str) else model
    harmful = harmful if harmful is not None else starter_prompts("harmful")
    harmless = harmless if harmless is not None else starter_prompts("harmless")
    config = directions_config or DirectionsConfig(n_train=28, n_val=8, n_test=12, batch_size=batch_size)
    timings = {"load": time.perf_counter() - start}

    t = time.perf_counter()
    d = extract_directions(
        m,
        harmful,
        harmless,
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
        [harmful, harmless, starter_prompts("borderline"), starter_prompts("attacks")],
        n_goals=6,
        per_class=12,
        exclude_ids=d.training_ids(),
        seed=config.seed,
    )
    plane_config = PlaneConfig(max_new_tokens=24, batch_size=batch_size)
    plane = run_plane(m, d, study, out_dir / "plane", plane_config, judge=judge, progress=progress)
    write_plane_figures(plane, out_dir / "plane", d)
    timings["plane"] = time.perf_counter() - t
    summary = main_summary(m, d, plane, out_dir, timings)
    write_json(out_dir / "summary.json", stamp_schema(summary, "main_summary", 1))
    geometry = plane.geometry["oblique"].to_dict()
    write_report(out_dir, summary, [directions_section(out_dir, d), plane_section(out_dir, geometry)])
    return summary


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
