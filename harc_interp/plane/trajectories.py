"""Response positions: does the model recognise harm while it writes, when the prompt side did not?

For every prompt: generate a greedy response, teacher-force prompt + response, and read the residual
at one layer slot at t_inst, t_post and every response token. Each response token gets coordinates on
the response-side directions (oblique: projections on v̂_harm_resp and v̂_ref_resp; orthonormal:
Gram–Schmidt basis of their span, when it is a plane).

Per prompt, with two thresholds calibrated on the same run:

- **prompt-side flag**: h(t_inst)·v̂_harm above the midpoint of the plain harmful and plain harmless
  means of that projection (the prompt side "sees" harm);
- **response score**: the mean (or max) of h(token)·v̂_harm_resp over the first `n_tokens` response
  tokens; **response flag**: score above the `quantile` (default 0.95) of the scores of helpful
  responses (not judged refusals) to plain harmless prompts;
- **recognised late**: response flagged although the prompt side was not.

The summary per group reports the rates of each flag and of late recognition, overall and among the
prompts the model complied with (it produced content rather than a refusal) whose prompt side did not
flag harm: the cases the HARC claim is about.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from ..artifacts import now, provenance, stamp_schema, versions, write_json, write_jsonl
from ..capture.forward import teacher_forced_residuals
from ..capture.generate import generate
from ..capture.judges import DEFAULT_JUDGE, Judge
from ..data.chat import formatter_for
from ..data.prompts import PromptSet
from ..directions.artifact import Directions
from ..errors import HarcError
from ..model.hooked import HarcModel
from .basis import HARMLESS, REFERENCE, PlaneBasis, plane_basis, unit_vector
from .geometry import group_of
from .stage import generation_rows, resolve_slot

log = logging.getLogger(__name__)

RESPONSE_NAMES = ("v_harm_resp", "v_ref_resp")


def response_score(
    projections: Float[Tensor, " tokens"], n_tokens: int = 32, reduce: str = "mean"
) -> float | None:
    """Mean (or max) projection over the first `n_tokens` response tokens; None for an empty response."""
    if reduce not in ("mean", "max"):
        raise HarcError(f"reduce must be 'mean' or 'max', got '{reduce}'")
    head = projections[:n_tokens]
    if head.numel() == 0:
        return None
    return float(head.mean() if reduce == "mean" else head.max())


def midpoint_threshold(values: Sequence[float], groups: Sequence[str]) -> float:
    """Midpoint of the plain harmful and plain harmless means (the prompt-side threshold)."""
    v, g = np.asarray(values, dtype=float), np.asarray(groups)
    if (g == REFERENCE).sum() < 1 or (g == HARMLESS).sum() < 1:
        raise HarcError(
            f"the prompt-side threshold needs plain '{REFERENCE}' and '{HARMLESS}' prompts: add files "
            "of each (labels 'harmful', 'harmless')"
        )
    return float((v[g == REFERENCE].mean() + v[g == HARMLESS].mean()) / 2)


def helpful_quantile(
    scores: Sequence[float | None], groups: Sequence[str], complied: Sequence[bool], quantile: float
) -> float:
    """The `quantile` of response scores of helpful (complied) responses to plain harmless prompts."""
    pool = [
        s for s, g, c in zip(scores, groups, complied, strict=True) if g == HARMLESS and c and s is not None
    ]
    if len(pool) < 2:
        raise HarcError(
            f"the response threshold needs at least two helpful responses to plain '{HARMLESS}' prompts; "
            f"found {len(pool)}: add more harmless prompts"
        )
    return float(np.quantile(pool, quantile))


@dataclass(frozen=True)
class TrajectoryConfig:
    layer: int | None = None  # None: the directions' selected layer
    max_new_tokens: int = 32
    n_tokens: int = 32  # response tokens pooled by the score (HARC pools the first 32)
    reduce: str = "mean"  # or "max"
    quantile: float = 0.95
    batch_size: int = 16
    system_prompt: str | None = None

    def __post_init__(self):
        if self.max_new_tokens < 1 or self.n_tokens < 1 or self.batch_size < 1:
            raise HarcError("max_new_tokens, n_tokens and batch_size must be positive")
        if not 0 < self.quantile < 1:
            raise HarcError(f"quantile must be in (0, 1), got {self.quantile}")
        if self.reduce not in ("mean", "max"):
            raise HarcError(f"reduce must be 'mean' or 'max', got '{self.reduce}'")


@dataclass(frozen=True)
class TrajectoryResult:
    slot: int
    rows: tuple[dict, ...]  # one per prompt (trajectories.jsonl)
    summary: dict  # summary.json


def summarise(rows: Sequence[dict]) -> dict[str, dict]:
    """Per group: rates of compliance, prompt-side and response flags, and late recognition."""

    def rate(num: int, den: int) -> float | None:
        return num / den if den else None

    out = {}
    for g in dict.fromkeys(r["group"] for r in rows):
        rs = [r for r in rows if r["group"] == g]
        n = len(rs)
        unflagged_complied = [r for r in rs if r["complied"] and not r["prompt_flagged"]]
        scores = [r["response_score"] for r in rs if r["response_score"] is not None]
        out[g] = {
            "n": n,
            "complied_rate": rate(sum(r["complied"] for r in rs), n),
            "prompt_flagged_rate": rate(sum(r["prompt_flagged"] for r in rs), n),
            "response_flagged_rate": rate(sum(r["response_flagged"] for r in rs), n),
            "late_recognition_rate": rate(sum(r["recognised_late"] for r in rs), n),
            "n_complied_prompt_unflagged": len(unflagged_complied),
            "late_recognition_among_complied_unflagged": rate(
                sum(r["recognised_late"] for r in unflagged_complied), len(unflagged_complied)
            ),
            "mean_response_score": float(np.mean(scores)) if scores else None,
            "mean_prompt_harmfulness": float(np.mean([r["prompt"]["harmfulness"] for r in rs])),
        }
    return out


def response_basis(directions: Directions, slot: int) -> tuple[Tensor, PlaneBasis | None, str | None]:
    """Unit response directions (rows v̂_harm_resp, v̂_ref_resp) and their orthonormal basis, or None
    with the reason when they span no plane at this slot."""
    for n in RESPONSE_NAMES:
        if not directions.has(n):
            raise HarcError(
                f"the directions artifact lacks '{n}': recompute it with `harc directions` (which adds the "
                "response-side directions)"
            )
    units = torch.stack([unit_vector(directions.unit(n, slot), n, slot) for n in RESPONSE_NAMES])
    try:
        return units, plane_basis(units[0], units[1], slot=slot, names=RESPONSE_NAMES), None
    except HarcError as e:
        log.warning("no orthonormal response basis: %s", e)
        return units, None, str(e)


@dataclass(frozen=True)
class Projections:
    """Every prompt's read-outs at one slot: the prompt side on v̂_harm (t_inst) and v̂_ref (t_post), each
    response token on the response-side directions (oblique; orthonormal when they span a plane), and
    the response score."""

    harm_inst: list[float]
    ref_post: list[float]
    tokens_oblique: list[Tensor]
    tokens_ortho: list[Tensor] | None
    scores: list[float | None]
    cos_resp: float
    no_plane: str | None


def project(model, directions: Directions, slot: int, chats, config: TrajectoryConfig) -> Projections:
    """Teacher-force the chats (prompt + response) and project their residuals at `slot`."""
    units, basis, no_plane = response_basis(directions, slot)
    v_harm = unit_vector(directions.unit("v_harm", slot), "v_harm", slot)
    v_ref = unit_vector(directions.unit("v_ref", slot), "v_ref", slot)
    forced = teacher_forced_residuals(model, chats, slot, batch_size=config.batch_size)
    tokens_oblique = [r.double() @ units.T for r in forced.response]
    return Projections(
        harm_inst=(forced.prompt[:, 0].double() @ v_harm).tolist(),
        ref_post=(forced.prompt[:, 1].double() @ v_ref).tolist(),
        tokens_oblique=tokens_oblique,
        tokens_ortho=[basis.orthonormal(r) for r in forced.response] if basis is not None else None,
        scores=[response_score(t[:, 0], config.n_tokens, config.reduce) for t in tokens_oblique],
        cos_resp=float(units[0] @ units[1]),
        no_plane=no_plane,
    )


def run_trajectories(
    model: HarcModel,
    directions: Directions,
    prompts: PromptSet,
    out_dir: str | Path | None = None,
    config: TrajectoryConfig = TrajectoryConfig(),
    judge: Judge = DEFAULT_JUDGE,
    progress: bool = True,
) -> TrajectoryResult:
    """Generate, teacher-force, project every response token, flag and summarise (see the module
    docstring); with `out_dir`, write trajectories.jsonl, summary.json and generations.jsonl (the
    figure is `report.figures.write_trajectory_figures`)."""
    fmt = formatter_for(model, config.system_prompt)
    directions.check_model(model, fmt.template_hash)
    slot = resolve_slot(directions, config.layer)
    groups = [group_of(p) for p in prompts.prompts]
    for needed in (REFERENCE, HARMLESS):
        if needed not in groups:
            raise HarcError(
                f"trajectories calibrate their thresholds on plain '{REFERENCE}' and '{HARMLESS}' prompts; "
                f"none labelled '{needed}' among the prompts"
            )
    gens = generate(
        model,
        prompts,
        max_new_tokens=config.max_new_tokens,
        batch_size=config.batch_size,
        system_prompt=config.system_prompt,
        progress=progress,
    )
    proj = project(
        model, directions, slot, fmt.format_many(prompts.texts, [g.response_ids for g in gens]), config
    )
    complied = [not judge(g.response) for g in gens]
    thresholds = {
        "prompt_harmfulness": midpoint_threshold(proj.harm_inst, groups),
        "prompt_rule": "midpoint of plain harmful and plain harmless means of h(t_inst)·v̂_harm",
        "response_score": helpful_quantile(proj.scores, groups, complied, config.quantile),
        "response_rule": f"{config.quantile} quantile of the {config.reduce} of h·v̂_harm_resp over the "
        f"first {config.n_tokens} tokens of helpful responses to plain harmless prompts",
    }
    rows = trajectory_rows(prompts, groups, gens, complied, proj, thresholds)
    summary = {
        "model": model.name,
        "model_fingerprint": model.fingerprint,
        "template_hash": fmt.template_hash,
        "slot": slot,
        "config": asdict(config),
        "judge": repr(judge),
        "thresholds": thresholds,
        "cos_harm_resp_ref_resp": proj.cos_resp,
        "orthonormal_response_basis": None if proj.tokens_ortho is None else "ok",
        "no_plane_reason": proj.no_plane,
        "groups": summarise(rows),
        "created": now(),
        "versions": versions(),
        "provenance": provenance(model),
    }
    result = TrajectoryResult(slot, tuple(rows), summary)
    if out_dir is not None:
        out = Path(out_dir)
        write_jsonl(out / "trajectories.jsonl", rows)
        write_jsonl(out / "generations.jsonl", generation_rows(gens, groups, complied))
        write_json(out / "summary.json", stamp_schema(summary, "trajectories", 1))
    return result


def trajectory_rows(
    prompts: PromptSet, groups, gens, complied, proj: Projections, thresholds: dict
) -> list[dict]:
    """One trajectories.jsonl row per prompt: flags, scores and every response token's coordinates."""
    rows = []
    for i, p in enumerate(prompts.prompts):
        prompt_flagged = proj.harm_inst[i] > thresholds["prompt_harmfulness"]
        response_flagged = proj.scores[i] is not None and proj.scores[i] > thresholds["response_score"]
        rows.append(
            {
                "id": p.id,
                "group": groups[i],
                "label": p.label,
                "attack_class": p.attack_class,
                "complied": complied[i],
                "finished": gens[i].finished,
                "n_tokens": len(gens[i].response_ids),
                "prompt": {"harmfulness": proj.harm_inst[i], "refusal": proj.ref_post[i]},
                "prompt_flagged": prompt_flagged,
                "response_score": proj.scores[i],
                "response_flagged": response_flagged,
                "recognised_late": response_flagged and not prompt_flagged,
                "tokens": {
                    "oblique": proj.tokens_oblique[i].tolist(),
                    "orthonormal": None if proj.tokens_ortho is None else proj.tokens_ortho[i].tolist(),
                },
            }
        )
    return rows
