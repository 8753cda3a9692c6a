"""Scoring new prompts with a Directions artifact: the saved logistic probes' P(harmful) and the
projection on v_harm, per layer slot, at t_inst (or t_post)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.metrics import roc_auc_score

from ..capture.activations import CacheConfig, cache_residuals
from ..data.chat import formatter_for
from ..data.prompts import SAFE_LABELS, UNSAFE_LABELS, PromptSet
from ..errors import HarcError
from ..model.hooked import HarcModel
from .artifact import Directions


@dataclass(frozen=True)
class PromptScores:
    """Per prompt and layer slot: the probe's P(harmful) and the projection h·v̂_harm at `position`."""

    position: str
    layers: tuple[int, ...]
    prompt_ids: tuple[str, ...]
    labels: tuple[str | None, ...]
    probe: np.ndarray  # [prompt, layer]
    projection: np.ndarray  # [prompt, layer]

    def auroc(self) -> dict[str, list[float]] | None:
        """Per slot AUROC of each score against the prompts' own labels (the safe/unsafe sides of `as_role`),
        or None when the prompts do not carry both kinds of label."""
        y = [1 if lab in UNSAFE_LABELS else 0 if lab in SAFE_LABELS else None for lab in self.labels]
        keep = [i for i, v in enumerate(y) if v is not None]
        ys = np.array([y[i] for i in keep])
        if len(set(ys.tolist())) < 2:
            return None
        return {
            name: [float(roc_auc_score(ys, scores[keep, j])) for j in range(len(self.layers))]
            for name, scores in (("probe", self.probe), ("projection", self.projection))
        }


def score_prompts(
    model: HarcModel,
    directions: Directions,
    prompts: PromptSet,
    *,
    position: str = "t_inst",
    layers: tuple[int, ...] | None = None,
    batch_size: int = 16,
    system_prompt: str | None = None,
    progress: bool = True,
) -> PromptScores:
    """Score `prompts` with the artifact's probes (every probe slot, or `layers`)."""
    if directions.probes is None:
        raise HarcError(
            "this Directions artifact has no saved probes (made before harc_interp saved them): rerun "
            "`harc directions` to fit them"
        )
    directions.check_model(model, formatter_for(model, system_prompt).template_hash)
    slots = tuple(directions.probes.layers if layers is None else layers)
    acts = cache_residuals(
        model,
        prompts,
        config=CacheConfig(
            layers=slots, positions=(position,), batch_size=batch_size, system_prompt=system_prompt
        ),
        progress=progress,
    )
    probe = np.stack(
        [directions.probes.score(acts.resid[:, i, 0], s, position).numpy() for i, s in enumerate(slots)], 1
    )
    projection = np.stack(
        [
            (acts.resid[:, i, 0].double() @ directions.unit("v_harm", s).double()).numpy()
            for i, s in enumerate(slots)
        ],
        1,
    )
    return PromptScores(
        position, slots, tuple(prompts.ids), tuple(p.label for p in prompts.prompts), probe, projection
    )
