"""Chains the stages into the main job. For now: starter prompts → residual cache → summary.

Later stages (directions, plane, coupling, verification) plug in here as they land.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from .activations import Activations, CacheConfig, cache_residuals
from .artifacts import now, versions, write_json
from .model import DEFAULT_MODEL, HarcModel, load_model
from .prompts import PromptSet, expand_attacks, starter_prompts

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
    batch_size: int = 16,
    dtype: str = "float32",
    device: str = "cpu",
    progress: bool = True,
) -> dict:
    """The main job: cache residuals of the starter prompts at every layer slot at t_inst and
    t_post, and write `summary.json` next to the activations."""
    out_dir = Path(out_dir)
    start = time.perf_counter()
    m = load_model(model, dtype=dtype, device=device) if isinstance(model, str) else model
    loaded = time.perf_counter()
    prompts = starter_study_set()
    acts = cache_residuals(
        m,
        prompts,
        out_dir=out_dir / "activations",
        config=CacheConfig(positions=("t_inst", "t_post"), batch_size=batch_size),
        progress=progress,
    )
    cached = time.perf_counter()
    sep = separation_by_layer(acts)
    summary = {
        "model": m.name,
        "model_fingerprint": m.fingerprint,
        "n_layers": m.n_layers,
        "d_model": m.d_model,
        "prompts": {lab: acts.meta["labels"].count(lab) for lab in sorted(set(acts.meta["labels"]))},
        "attack_classes": sorted({c for c in acts.meta["attack_classes"] if c}),
        "resid_shape": list(acts.resid.shape),
        "positions": list(acts.positions),
        "harmful_vs_harmless_relative_separation": sep,
        "peak_layer": {pos: int(max(range(len(v)), key=v.__getitem__)) for pos, v in sep.items()},
        "seconds": {"load": round(loaded - start, 1), "cache": round(cached - loaded, 1)},
        "artifacts": {"activations": str(out_dir / "activations")},
        "created": now(),
        "versions": versions(),
    }
    write_json(out_dir / "summary.json", summary)
    return summary
