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
from ..capture.forward import kl_divergence, last_token_logprobs
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
    n_null: int = 200  # random planes in the null distribution
    tolerance: float = 1e-5  # relative out-of-plane change still called confined
    batch_size: int = 16
    seed: int = 0

    def __post_init__(self):
        if self.n_null < 1 or self.tolerance < 0 or self.batch_size < 1:
            raise HarcError("n_null and batch_size must be positive and tolerance non-negative")


def random_plane_fractions(delta: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """Energy fraction of `delta` [m, d] in n random 2-D subspaces (the null distribution)."""
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, delta.shape[-1], 2, generator=gen, dtype=torch.float64))
    total = delta.double().pow(2).sum()
    return torch.einsum("md,ndk->nmk", delta.double(), q).pow(2).sum((1, 2)) / total


def confinement_report(
    model: HarcModel,
    directions: Directions,
    prompts: dict[str, PromptSet],
    *,
    base: Variant | None = None,
    tuned: Variant,
    intervened_slots: Sequence[int] = (),
    positions: tuple[str, ...] = ("t_inst", "t_post"),
    n_null: int = 200,
    tolerance: float = 1e-5,
    batch_size: int = 16,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Per prompt set, slot and position: where the change between base and tuned lives.
    `base` defaults to the plain model."""
    base = base or Variant()
    slots = tuple(range(model.n_layers + 1))
    cfg = CacheConfig(layers=slots, positions=positions, batch_size=batch_size)
    bases = {}
    for s in slots:
        try:
            bases[s] = basis_from_directions(directions, s).basis.T  # [d_model, 2], float64
        except HarcError:
            bases[s] = None  # e.g. the embedding slot, where v_ref is zero
    report: dict = {
        "slots": list(slots),
        "positions": list(positions),
        "intervened_slots": list(intervened_slots),
        "tolerance": tolerance,
        "sets": {},
    }
    worst_at_intervened = 0.0
    for name, ps in prompts.items():
        with base.context():
            h0 = cache_residuals(model, ps, config=cfg, hooks=base.hooks, progress=progress).resid.double()
        with tuned.context():
            h1 = cache_residuals(model, ps, config=cfg, hooks=tuned.hooks, progress=progress).resid.double()
        delta = h1 - h0
        rows = []
        for i, s in enumerate(slots):
            for j, pos in enumerate(positions):
                d, h = delta[:, i, j], h0[:, i, j]
                norm_h = h.norm(dim=-1).clamp_min(1e-12)
                row = {"slot": s, "position": pos, "rel_change": float((d.norm(dim=-1) / norm_h).mean())}
                if bases[s] is not None:
                    u = bases[s]
                    inside = (d @ u) @ u.T
                    out = d - inside
                    row["rel_out_of_plane"] = float((out.norm(dim=-1) / norm_h).mean())
                    energy = float(d.pow(2).sum())
                    if energy > 1e-20:
                        null = random_plane_fractions(d, n_null, seed + s)
                        row["in_plane_energy_fraction"] = float(inside.pow(2).sum() / energy)
                        row["null_mean"] = float(null.mean())
                        row["null_p99"] = float(torch.quantile(null, 0.99))
                    if s in intervened_slots:
                        worst_at_intervened = max(worst_at_intervened, row["rel_out_of_plane"])
                rows.append(row)
        report["sets"][name] = rows
        report.setdefault("summary", {})[name] = _summary(rows, tolerance)
    harmless = prompts.get("harmless")
    if harmless is not None:
        chats = formatter_for(model).format_many(harmless.texts)
        with base.context():
            lp0 = last_token_logprobs(model, chats, hooks=base.hooks, batch_size=batch_size)
        with tuned.context():
            lp1 = last_token_logprobs(model, chats, hooks=tuned.hooks, batch_size=batch_size)
        report["harmless_kl"] = float(kl_divergence(lp0, lp1).mean())
    # An intervention with no designated slots (e.g. LoRA on every layer) has nothing to be confined at.
    report["max_rel_out_of_plane_at_intervened"] = worst_at_intervened if intervened_slots else None
    report["confined_at_intervened"] = worst_at_intervened <= tolerance if intervened_slots else None
    report["provenance"] = provenance(model, tuned=tuned.name, base=base.name)
    return report


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
