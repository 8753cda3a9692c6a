"""Choosing the layer: the refusal-direction procedure (Arditi et al.) and the HARC layer score."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from tqdm.auto import tqdm

from ..capture.forward import kl_divergence, refusal_score
from ..capture.sweep import PromptSweep
from ..data.chat import ChatPrompt
from ..errors import HarcError
from ..model.edits import ablation_hooks, addition_hooks
from ..model.hooked import HarcModel
from .artifact import Directions
from .means import cosine_per_layer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Candidate:
    slot: int
    position: str
    bypass_score: (
        float  # mean refusal score on harmful prompts, direction ablated everywhere (lower = better)
    )
    induce_score: float  # mean refusal score on harmless prompts, direction added at `slot` (must be > 0)
    kl: float  # KL(base ‖ ablated) on harmless next-token distributions (must be <= kl_max)
    eligible: bool
    reason: str


def arditi_select(
    model: HarcModel,
    directions: Directions,
    harmful: Sequence[ChatPrompt],
    harmless: Sequence[ChatPrompt],
    refusal_tokens: Sequence[int],
    *,
    slots: Sequence[int] | None = None,
    positions: Sequence[str] = ("t_post",),
    max_layer_fraction: float = 0.8,
    kl_max: float = 0.1,
    batch_size: int = 16,
    reuse: bool = True,
    progress: bool = True,
) -> tuple[Candidate | None, list[Candidate], dict]:
    """Score every (slot, position) candidate; pick the lowest bypass score among those with induce > 0,
    KL <= kl_max and slot < max_layer_fraction · n_layers.

    `reuse` (default) scores through a `PromptSweep`: the template's shared prefix once per candidate,
    each batch packed into one row, and the induce score resumed at the candidate's slot from the
    unedited residual; `reuse=False` runs every pass from the embeddings (the reference the benchmark
    and the tests compare with)."""
    limit = int(max_layer_fraction * model.n_layers)
    slots = [s for s in (slots if slots is not None else range(model.n_layers)) if s < model.n_layers]
    grid_positions = [p if p != "t_post" else directions.grid_positions[-1] for p in positions]
    for p in grid_positions:
        if p not in directions.grid_positions:
            raise HarcError(
                f"selection position '{p}' is not in the directions grid {directions.grid_positions}"
            )
    scored = [s for s in slots if s < limit]
    harmful_sweep = PromptSweep(model, harmful, batch_size=batch_size, share_prefix=reuse, pack=reuse)
    harmless_sweep = PromptSweep(
        model,
        harmless,
        batch_size=batch_size,
        share_prefix=reuse,
        pack=reuse,
        resume_slots=scored if reuse else (),
    )
    harmful_lp, harmless_lp = harmful_sweep.last_logprobs, harmless_sweep.last_logprobs
    base_harmful, base_harmless = harmful_lp(), harmless_lp()
    baseline = {
        "harmful_refusal_score": float(refusal_score(base_harmful, refusal_tokens).mean()),
        "harmless_refusal_score": float(refusal_score(base_harmless, refusal_tokens).mean()),
    }
    candidates = []
    todo = [(s, p, gp) for s in slots for p, gp in zip(positions, grid_positions, strict=True)]
    for slot, name, grid_pos in tqdm(todo, desc="selecting direction", disable=not progress):
        vec = directions.grid_raw(slot, grid_pos)
        nan = float("nan")
        if slot >= limit:  # discarded whatever its scores: do not spend forward passes on it
            candidates.append(
                Candidate(slot, name, nan, nan, nan, False, f"last {1 - max_layer_fraction:.0%} of layers")
            )
            continue
        if vec.norm() < 1e-6:  # e.g. template tokens at the embedding: the same token in every prompt
            candidates.append(Candidate(slot, name, nan, nan, nan, False, "zero direction"))
            continue
        ablate = ablation_hooks(model, vec)
        bypass = refusal_score(harmful_lp(ablate), refusal_tokens)
        kl = kl_divergence(base_harmless, harmless_lp(ablate)).mean()
        added = harmless_lp(addition_hooks(model, vec, slot), from_slot=slot if reuse else None)
        induce = refusal_score(added, refusal_tokens).mean()
        reasons = [
            r
            for r, bad in (
                ("induce <= 0", induce <= 0),
                (f"KL > {kl_max}", kl > kl_max),
            )
            if bad
        ]
        candidates.append(
            Candidate(
                slot,
                name,
                float(bypass.mean()),
                float(induce),
                float(kl),
                not reasons,
                ", ".join(reasons) or "ok",
            )
        )
    eligible = [c for c in candidates if c.eligible]
    best = min(eligible, key=lambda c: c.bypass_score) if eligible else None
    if best is None:
        log.warning("no candidate passed the refusal-direction filters; see the candidates table")
    return best, candidates, baseline


def relaxed_pick(candidates: Sequence[Candidate]) -> Candidate | None:
    """The refusal-direction choice when no candidate passes Arditi's filters (common on small models).
    The layer filter stays; the score thresholds are relaxed one at a time. If some candidates induce
    refusal (only the KL filter failed), the lowest bypass score among them; otherwise the highest
    induce score: the induce score is the selection's only check that adding the direction *causes*
    refusal, so the candidate closest to passing it is the most refusal-like direction. None when no
    candidate was scored (every slot filtered out or zero)."""
    scored = [c for c in candidates if c.induce_score == c.induce_score]  # NaN: not scored
    inducing = [c for c in scored if c.induce_score > 0]
    if inducing:
        return min(inducing, key=lambda c: c.bypass_score)
    return max(scored, key=lambda c: c.induce_score, default=None)


def harc_layer_scores(directions: Directions, exclude: int = 4) -> list[float | None]:
    """(1−|cos(v_ref,v_harm)|)(1−|cos(v_ref_resp,v_harm_resp)|)|cos(v_harm,v_harm_resp)||cos(v_ref,v_ref_resp)|
    per slot; None for the first and last `exclude` slots."""
    if not directions.has("v_harm_resp"):
        raise HarcError("the HARC layer score needs the response directions (v_harm_resp, v_ref_resp)")
    v = directions.vectors
    score = (
        (1 - cosine_per_layer(v["v_ref"], v["v_harm"]).abs())
        * (1 - cosine_per_layer(v["v_ref_resp"], v["v_harm_resp"]).abs())
        * cosine_per_layer(v["v_harm"], v["v_harm_resp"]).abs()
        * cosine_per_layer(v["v_ref"], v["v_ref_resp"]).abs()
    )
    n = len(directions.layers)
    exclude = min(exclude, (n - 1) // 2)  # small models: keep at least the middle slot
    return [None if i < exclude or i >= n - exclude else float(score[i]) for i in range(n)]


def top_layers(scores: Sequence[float | None], layers: Sequence[int], k: int) -> list[int]:
    """The `k` layers with the highest scores (None scores skipped)."""
    ranked = sorted((s, layer) for s, layer in zip(scores, layers, strict=True) if s is not None)
    return [layer for _, layer in ranked[::-1][:k]]


def candidates_table(candidates: Sequence[Candidate]) -> list[dict]:
    """The candidates as JSON-ready rows."""
    return [asdict(c) for c in candidates]


def chosen_slot(
    method: str,
    arditi_slot: int | None,
    harc_scores: Sequence[float | None] | None,
    layers: Sequence[int],
) -> int:
    """The layer slot the configured method picks."""
    if method == "arditi":
        if arditi_slot is None:
            raise HarcError(
                "no refusal-direction candidate passed the filters; try selection='harc' or more layers"
            )
        return arditi_slot
    if method == "harc":
        if harc_scores is None:
            raise HarcError("HARC selection needs response directions")
        return top_layers(harc_scores, layers, 1)[0]
    raise HarcError(f"unknown selection method '{method}' (arditi or harc)")
