"""Chains the stages into the main job: directions → residual cache of the study set → report.

Later stages (plane, coupling, verification) plug in here as they land.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from .activations import Activations, CacheConfig, cache_residuals
from .artifacts import now, versions, write_json
from .evaluate import DEFAULT_JUDGE, Judge
from .extract import DirectionsConfig, extract_directions
from .model import DEFAULT_MODEL, HarcModel, load_model
from .prompts import PromptSet, expand_attacks, starter_prompts
from .report import directions_section, write_report

log = logging.getLogger(__name__)


def starter_study_set(n_attack_goals: int = 4, seed: int = 0) -> PromptSet:
    """Built-in harmful, harmless and borderline prompts plus every starter attack template
    filled with a few harmful goals."""
    harmful, harmless, borderline = (starter_prompts(k) for k in ("harmful", "harmless", "borderline"))
    templates = starter_prompts("attacks").templates
    attacks = expand_attacks(templates, harmful.sample(n_attack_goals, seed=seed).prompts)
    return PromptSet("starter", harmful.prompts + harmless.prompts + borderline.prompts + attacks.prompts)


def separation_by_layer(acts: Activations) -> dict[str, list[float]]:
    """‖mean(harmful) − mean(harmless)‖ / RMS‖h‖ per layer slot and position: where the sets come
    apart, relative to the residual norm (which grows with depth)."""
    labels = acts.meta["labels"]
    harmful = torch.tensor([lab == "harmful" for lab in labels])
    harmless = torch.tensor([lab == "harmless" for lab in labels])
    out = {}
    for j, pos in enumerate(acts.positions):
        x = acts.resid[:, :, j].double()
        diff = x[harmful].mean(0) - x[harmless].mean(0)
        rms = x[harmful | harmless].norm(dim=-1).pow(2).mean(0).sqrt()
        out[pos] = [round(float(v), 3) for v in diff.norm(dim=-1) / rms]
    return out


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
    harmless prompts (default: the built-in starter sets), a residual cache of the starter study set
    (plain, borderline and attack prompts), `summary.json` and `report.html`. Resumable: rerunning
    with the same settings reuses every finished step."""
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
    acts_dir = out_dir / "activations"
    if (acts_dir / "activations.json").is_file():
        acts = Activations.load(acts_dir)
    else:
        acts = cache_residuals(
            m,
            starter_study_set(),
            out_dir=acts_dir,
            config=CacheConfig(positions=("t_inst", "t_post"), batch_size=batch_size),
            progress=progress,
        )
    timings["cache"] = time.perf_counter() - t
    sep = separation_by_layer(acts)
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
            "refusal_tokens": d.meta["refusal_token_strings"],
            "causal_validation": cv,
        },
        "study_set": {
            "prompts": {lab: acts.meta["labels"].count(lab) for lab in sorted(set(acts.meta["labels"]))},
            "attack_classes": sorted({c for c in acts.meta["attack_classes"] if c}),
            "resid_shape": list(acts.resid.shape),
            "harmful_vs_harmless_relative_separation": sep,
        },
        "seconds": {k: round(v, 1) for k, v in timings.items()},
        "artifacts": {
            "directions": str(out_dir / "directions"),
            "activations": str(acts_dir),
            "report": str(out_dir / "report.html"),
        },
        "created": now(),
        "versions": versions(),
    }
    write_json(out_dir / "summary.json", summary)
    write_report(out_dir, summary, [directions_section(out_dir, d.meta)])
    return summary
