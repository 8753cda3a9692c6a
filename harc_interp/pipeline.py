"""Chains the stages into the main job: directions → the plane with attack classes → report.

Later stages (coupling, verification) plug in here as they land.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from .artifacts import now, versions, write_json
from .evaluate import DEFAULT_JUDGE, Judge
from .extract import DirectionsConfig, extract_directions
from .model import DEFAULT_MODEL, HarcModel, load_model
from .plane import PlaneConfig, directions_training_ids, run_plane, study_prompts
from .prompts import PromptSet, starter_prompts
from .report import directions_section, plane_section, write_report


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
    m = load_model(model, dtype=dtype, device=device) if isinstance(model, str) else model
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
    timings["directions"] = time.perf_counter() - t

    t = time.perf_counter()
    study = study_prompts(
        [harmful, harmless, starter_prompts("borderline"), starter_prompts("attacks")],
        n_goals=6,
        per_class=12,
        exclude_ids=directions_training_ids(d),
        seed=config.seed,
    )
    plane = run_plane(
        m,
        d,
        study,
        out_dir / "plane",
        PlaneConfig(max_new_tokens=24, batch_size=batch_size),
        judge=judge,
        progress=progress,
    )
    timings["plane"] = time.perf_counter() - t
    geometry = plane.geometry["oblique"].to_dict()
    cv = d.meta["causal_validation"]
    summary = {
        "model": m.name,
        "model_fingerprint": m.fingerprint,
        "n_layers": m.n_layers,
        "d_model": m.d_model,
        "directions": {
            "selected_layer": d.selected_layer,
            "selection_method": d.meta["selection"]["method"],
            "best_harm_layer": d.meta["metrics"]["best_harm_layer"],
            "best_harm_layer_probe": d.meta["metrics"]["best_harm_layer_probe"],
            "refusal_tokens": d.meta["refusal_token_strings"],
            "causal_validation": cv,
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
    }
    write_json(out_dir / "summary.json", summary)
    write_report(out_dir, summary, [directions_section(out_dir, d.meta), plane_section(out_dir, geometry)])
    return summary
