"""Is an intervention confined to the harmfulness–refusal plane? Compare base and tuned residuals.

For every layer slot and position, Δ = h_tuned − h_base is split into its in-plane part
(U Uᵀ Δ, U an orthonormal basis of span{v_harm, v_ref} at that slot) and the rest. Reported per slot:
the relative out-of-plane norm ‖Δ_out‖ / ‖h_base‖, the relative change ‖Δ‖ / ‖h_base‖, and the fraction
of the change's energy in the plane against the same fraction for random 2-D subspaces (the null: a
change with no preference for the plane puts ~2/d_model of its energy in any plane). At intervened
slots a confined intervention has Δ_out = 0 up to float error; downstream, the model's own layers
spread the change, which the report shows rather than hides. Plus KL on harmless prompts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..artifacts import provenance
from ..capture.activations import CacheConfig, cache_residuals
from ..capture.forward import kl_divergence, response_residuals
from ..capture.generate import generate_chats
from ..capture.sweep import last_token_logprobs
from ..data.chat import formatter_for
from ..data.prompts import PromptSet
from ..directions.artifact import Directions
from ..errors import HarcError
from ..model.edits import Variant
from ..model.hooked import HarcModel
from ..plane.basis import basis_from_directions


@dataclass(frozen=True)
class VerifyConfig:
    """Where `confinement_report` looks and how strict it is (its keyword arguments)."""

    positions: tuple[str, ...] = ("t_inst", "t_post")
    response_tokens: int = 16  # the base model's own answer, teacher-forced: the coupling edits it too
    n_null: int = 200  # random planes in the null distribution
    tolerance: float = 1e-5  # relative out-of-plane change still called confined
    batch_size: int = 16
    seed: int = 0

    def __post_init__(self):
        if self.n_null < 1 or self.tolerance < 0 or self.batch_size < 1 or self.response_tokens < 0:
            raise HarcError(
                "n_null and batch_size must be positive, tolerance and response_tokens non-negative"
            )


def random_plane_fractions(delta: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """Energy fraction of `delta` [m, d] in n random 2-D subspaces (the null distribution)."""
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, delta.shape[-1], 2, generator=gen, dtype=torch.float64))
    total = delta.double().pow(2).sum()
    return torch.einsum("md,ndk->nmk", delta.double(), q).pow(2).sum((1, 2)) / total


def change_row(d: torch.Tensor, h: torch.Tensor, slot: int, position: str, u, n_null: int, seed: int) -> dict:
    """Where the change `d` [m, d_model] of residuals `h` lives at one slot and position (group): its
    relative size, its relative out-of-plane part, and its in-plane energy share against random planes."""
    norm_h = h.norm(dim=-1).clamp_min(1e-12)
    row = {"slot": slot, "position": position, "rel_change": float((d.norm(dim=-1) / norm_h).mean())}
    if u is None or not len(d):
        return row
    inside = (d @ u) @ u.T
    row["rel_out_of_plane"] = float(((d - inside).norm(dim=-1) / norm_h).mean())
    energy = float(d.pow(2).sum())
    if energy > 1e-20:
        null = random_plane_fractions(d, n_null, seed + slot)
        row["in_plane_energy_fraction"] = float(inside.pow(2).sum() / energy)
        row["null_mean"] = float(null.mean())
        row["null_p99"] = float(torch.quantile(null, 0.99))
    return row


def confinement_report(
    model: HarcModel,
    directions: Directions,
    prompts: dict[str, PromptSet],
    *,
    base: Variant | None = None,
    tuned: Variant,
    intervened_slots: Sequence[int] = (),
    positions: tuple[str, ...] = ("t_inst", "t_post"),
    response_tokens: int = 16,
    n_null: int = 200,
    tolerance: float = 1e-5,
    batch_size: int = 16,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Per prompt set, slot and position, where the change between base and tuned lives: at the prompt
    `positions` and (`response_tokens` > 0) at every token of the base model's own greedy answer,
    teacher-forced (position "response"). The verdict: confined when, at every intervened slot (with
    none designated, e.g. LoRA: the first slot where anything changes), the relative out-of-plane
    change is at most `tolerance` in every position group. `base` defaults to the plain model."""
    base = base or Variant()
    slots = tuple(range(model.n_layers + 1))
    bases = {}
    for s in slots:
        try:
            bases[s] = basis_from_directions(directions, s).basis.T  # [d_model, 2], float64
        except HarcError:
            bases[s] = None  # e.g. the embedding slot, where v_ref is zero
    groups = [*positions, *(("response",) if response_tokens else ())]
    report: dict = {"slots": list(slots), "positions": groups, "intervened_slots": list(intervened_slots)}
    report |= {"tolerance": tolerance, "response_tokens": response_tokens, "sets": {}, "summary": {}}
    for name, ps in prompts.items():
        pairs = _prompt_changes(model, ps, slots, positions, base, tuned, batch_size, progress)
        if response_tokens:
            pairs["response"] = _response_changes(model, ps, slots, base, tuned, response_tokens, batch_size)
        rows = [
            change_row(d[:, i], h[:, i], s, group, bases[s], n_null, seed)
            for group, (h, d) in pairs.items()
            for i, s in enumerate(slots)
        ]
        report["sets"][name] = rows
        report["summary"][name] = _summary(rows, tolerance)
    report["verdict"] = verdict(report, tolerance)
    harmless = prompts.get("harmless")
    if harmless is not None:
        chats = formatter_for(model).format_many(harmless.texts)
        lps = []
        for variant in (base, tuned):
            with variant.context():
                lps.append(last_token_logprobs(model, chats, hooks=variant.hooks, batch_size=batch_size))
        report["harmless_kl"] = float(kl_divergence(*lps).mean())
    # Kept for readers of earlier reports: the verdict at the designated slots.
    worst = report["verdict"]["max_rel_out_of_plane"]
    report["max_rel_out_of_plane_at_intervened"] = worst if intervened_slots else None
    report["confined_at_intervened"] = report["verdict"]["confined"] if intervened_slots else None
    report["provenance"] = provenance(model, tuned=tuned.name, base=base.name)
    return report


def _prompt_changes(model, ps, slots, positions, base, tuned, batch_size, progress) -> dict:
    """{position: (base residuals [prompt, slot, d], change [prompt, slot, d])} at the prompt positions."""
    cfg = CacheConfig(layers=slots, positions=positions, batch_size=batch_size)
    h = []
    for variant in (base, tuned):
        with variant.context():
            h.append(
                cache_residuals(model, ps, config=cfg, hooks=variant.hooks, progress=progress).resid.double()
            )
    return {pos: (h[0][:, :, j], h[1][:, :, j] - h[0][:, :, j]) for j, pos in enumerate(positions)}


def _response_changes(model, ps, slots, base, tuned, n_tokens: int, batch_size: int):
    """(base residuals, change), [token, slot, d], over the base model's own first `n_tokens` answer
    tokens to each prompt, teacher-forced under both variants."""
    fmt = formatter_for(model)
    chats = fmt.format_many(ps.texts, ids=ps.ids)
    with base.context():
        answers = generate_chats(
            model, chats, max_new_tokens=n_tokens, batch_size=batch_size, hooks=base.hooks, progress=False
        )
    answered = fmt.format_many(ps.texts, [ids for ids, _ in answers], ids=ps.ids)
    h = []
    for variant in (base, tuned):
        with variant.context():
            h.append(
                response_residuals(
                    model, answered, slots, hooks=variant.hooks, batch_size=batch_size
                ).double()
            )
    return h[0], h[1] - h[0]


def verdict(report: dict, tolerance: float) -> dict:
    """Confined or not, and the worst relative out-of-plane change per checked slot and position group."""
    rows = [r for rows in report["sets"].values() for r in rows]
    checked = list(report["intervened_slots"])
    if not checked:  # no designated slots: the change must enter the residual stream inside the plane
        first = min((r["slot"] for r in rows if r["rel_change"] > tolerance), default=None)
        checked = [] if first is None else [first]
    by_slot = {
        str(s): {
            g: max(
                (r.get("rel_out_of_plane", 0.0) for r in rows if r["slot"] == s and r["position"] == g),
                default=0.0,
            )
            for g in report["positions"]
        }
        for s in checked
    }
    worst = max((v for groups in by_slot.values() for v in groups.values()), default=0.0)
    return {
        "confined": worst <= tolerance,
        "tolerance": tolerance,
        "checked_slots": checked,
        "max_rel_out_of_plane": worst,
        "by_slot": by_slot,
        "rule": "at every intervened slot (none designated: the first changed slot), every position group's "
        "relative out-of-plane change is at most the tolerance",
    }


def _summary(rows: list[dict], tolerance: float) -> dict:
    """Where the change lives, over every slot and position of one prompt set."""
    changed = [r for r in rows if r["rel_change"] > tolerance]
    in_plane = [r for r in changed if "in_plane_energy_fraction" in r]
    return {
        "first_changed_slot": min((r["slot"] for r in changed), default=None),
        "max_rel_change": max((r["rel_change"] for r in rows), default=0.0),
        "max_rel_out_of_plane": max((r.get("rel_out_of_plane", 0.0) for r in rows), default=0.0),
        "mean_in_plane_energy_fraction": (
            sum(r["in_plane_energy_fraction"] for r in in_plane) / len(in_plane) if in_plane else None
        ),
        "mean_null_p99": sum(r["null_p99"] for r in in_plane) / len(in_plane) if in_plane else None,
        "share_above_null_p99": (
            sum(r["in_plane_energy_fraction"] > r["null_p99"] for r in in_plane) / len(in_plane)
            if in_plane
            else None
        ),
    }
