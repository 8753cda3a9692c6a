"""The subspace coupling's objective at one slot, as named pure functions and one object that binds
them to a map and its read-out scale.

In standardised read-outs s (0 = harmless mean, 1 = plain-harmful mean, per axis; harmfulness read at
t_inst, refusal at t_post as in HARC; s⁰ before the map):

    harmful-like:  2·relu(m − s) + relu(s⁰ − s)     over the read entries (lowering a read-out costs: with
                   the hinge alone the map pulled already-refused prompts down to the margin); m is
                   `plain_margin` for plain harmful prompts when set
    harmless-like: relu(s_ref − m_safe) + ρ·relu(s_ref − s⁰_ref) + λ·‖(f(z) − z) / σ‖²   (retention;
                   ρ = `safe_raise_weight` charges any rise of a safe prompt's refusal read-out)

Response tokens use the refusal read-out only, in t_post gaps above the harmless responses' mean, with
`response_margin` (`plain_response_margin` for plain harmful prompts) and the same harmless terms.
Borderline prompts are about harmful topics, so only their refusal read-out is constrained.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..directions.artifact import Directions
from ..errors import HarcError
from ..plane.basis import basis_from_directions
from .datasets import HARMFUL_LIKE
from .maps import PlaneMap


def oblique_coordinates(e: Tensor, z: Tensor) -> Tensor:
    """Plane coordinates [..., 2] (orthonormal basis) → oblique read-outs [..., 2]: (z·v̂_harm, z·v̂_ref),
    with e [2 (harm, ref), 2] the unit directions in that basis."""
    return z @ e.T


def standardisation(
    d: Directions, slot: int, coords: dict[str, Tensor]
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """At `slot`: oblique read-out vectors e [2 (harm, ref), 2] in the plane basis; per span position the
    harmless (lo) and plain-harmful (hi) means of the oblique read-outs [position, 2], and their
    separation (hi − lo) / pooled std [position, 2]."""
    pb = basis_from_directions(d, slot)
    e = (pb.units @ pb.basis.T).float()  # rows: v̂_harm, v̂_ref in the orthonormal basis
    harmless = oblique_coordinates(e, coords["harmless"][:, 0])  # [n, position, 2]
    harmful = oblique_coordinates(e, coords["harmful"][:, 0])
    lo, hi = harmless.mean(0), harmful.mean(0)
    spread = torch.cat([harmless - lo, harmful - hi]).std(0).clamp_min(1e-12)
    if (hi[0, 0] - lo[0, 0]).abs() < 1e-6 or (hi[-1, 1] - lo[-1, 1]).abs() < 1e-6:
        raise HarcError("harmful and harmless prompts have the same plane coordinates at a coupling slot")
    return e, lo, hi, (hi - lo) / spread


def raise_to_margin(s: Tensor, before: Tensor, margin: float, hinge_weight: float = 1.0) -> Tensor:
    """Harmful-like read-outs [n] (flattened over the read entries): below the margin costs
    `hinge_weight` × its distance, and any fall below where they were (`before`) costs too."""
    return hinge_weight * torch.relu(margin - s).mean() + torch.relu(before - s).mean()


def hold_safe(s: Tensor, before: Tensor, safe_margin: float, raise_weight: float) -> Tensor:
    """Harmless-like refusal read-outs [n]: above the safe margin costs, and with `raise_weight` any rise."""
    return torch.relu(s - safe_margin).mean() + raise_weight * torch.relu(s - before).mean()


def retention(mapped: Tensor, z: Tensor, sigma: Tensor) -> Tensor:
    """Mean squared movement ‖(f(z) − z) / σ‖² over points [..., 2]."""
    return ((mapped - z) / sigma).pow(2).sum(-1).mean()


@dataclass(frozen=True)
class Margins:
    """The objective's targets and weights (a `SubspaceConfig` subset)."""

    margin: float
    plain_margin: float | None
    safe_margin: float
    safe_raise_weight: float
    retention_weight: float
    response_margin: float
    plain_response_margin: float | None

    @classmethod
    def of(cls, config) -> Margins:
        return cls(**{f: getattr(config, f) for f in cls.__dataclass_fields__})

    def for_span(self, name: str) -> float:
        """The span margin of condition `name` (plain harmful prompts may have their own)."""
        return self.plain_margin if name == "harmful" and self.plain_margin is not None else self.margin

    def for_response(self, name: str) -> float:
        """The response margin of condition `name` (plain harmful prompts may have their own)."""
        if name == "harmful" and self.plain_response_margin is not None:
            return self.plain_response_margin
        return self.response_margin


class SlotObjective:
    """The objective of the map at one coupling slot, on span coordinates [b, slot, position, 2] (the
    read slots, then this slot last) and response-token coordinates [b, token, 2] (NaN past a response's
    end). Built by `fit_slot_objective`, which also sets the map's standardisation."""

    def __init__(self, plane_map: PlaneMap, e, lo, hi, separation, reads, resp_lo, margins: Margins):
        self.plane_map, self.e, self.lo, self.hi = plane_map, e, lo, hi
        self.separation, self.reads, self.resp_lo, self.margins = separation, reads, resp_lo, margins
        n_pos = lo.shape[0]
        self.roles = torch.arange(n_pos)
        self.edited = self.roles >= int(plane_map.first_edited_role)
        self.gap = torch.where(reads, hi - lo, torch.ones_like(lo))  # unread entries may have no gap
        self.sigma_span = plane_map.sigma[plane_map.map_index(self.roles, (n_pos,))]

    def standardised(self, z: Tensor) -> Tensor:
        """Span coordinates [b, position, 2] → read-outs s (0 = harmless mean, 1 = harmful mean)."""
        return (oblique_coordinates(self.e, z) - self.lo) / self.gap

    def response_readout(self, z: Tensor) -> Tensor:
        """Response tokens [n, 2] → refusal read-out in t_post gaps above the harmless responses' mean."""
        return (oblique_coordinates(self.e, z)[:, 1] - self.resp_lo) / self.gap[-1, 1]

    def map_span(self, span: Tensor) -> Tensor:
        """[b, slot, position, 2] → this slot's coordinates, mapped where the map edits."""
        zb, pm = span[:, -1], self.plane_map
        n_pos = zb.shape[1]
        context = span.flatten(1, 2)[:, None].expand(-1, n_pos, -1, -1) if pm.n_context else None
        return torch.where(self.edited[:, None], pm(zb, self.roles.expand(zb.shape[0], -1), context), zb)

    def map_responses(self, zr: Tensor, span: Tensor) -> tuple[Tensor, Tensor]:
        """Response tokens [b, token, 2] of prompts with span coordinates → (valid tokens [n, 2], mapped)."""
        ok = ~torch.isnan(zr[..., 0])
        flat = span.flatten(1, 2)
        context = flat[:, None].expand(-1, zr.shape[1], -1, -1)[ok] if self.plane_map.n_context else None
        return zr[ok], self.plane_map(zr[ok], context=context)

    def span_loss(self, name: str, span: Tensor) -> Tensor:
        """Span loss per prompt of condition `name`: harmful-like prompts raised to their margin, safe ones
        kept in place and charged for any rise."""
        zb, mapped = span[:, -1], self.map_span(span)
        before, s = self.standardised(zb), self.standardised(mapped)
        if name in HARMFUL_LIKE:
            # hinge weight 2: on the scale of HARC's two hinges (harmfulness at t_inst, refusal at t_post)
            return raise_to_margin(s[:, self.reads], before[:, self.reads], self.margins.for_span(name), 2.0)
        ref = self.reads[:, 1]
        m = self.margins
        kept = retention(mapped[:, self.edited], zb[:, self.edited], self.sigma_span[self.edited])
        return hold_safe(s[:, ref, 1], before[:, ref, 1], m.safe_margin, m.safe_raise_weight) + (
            m.retention_weight * kept
        )

    def response_loss(self, name: str, zr: Tensor, span: Tensor) -> Tensor:
        """Response-token loss of condition `name`: the rule of `span_loss` on the response read-out."""
        zr, mapped = self.map_responses(zr, span)
        if not zr.shape[0]:
            return torch.zeros(())
        before, s = self.response_readout(zr), self.response_readout(mapped)
        if name in HARMFUL_LIKE:
            return raise_to_margin(s, before, self.margins.for_response(name))
        m = self.margins
        kept = retention(mapped, zr, self.plane_map.sigma[-1])
        return hold_safe(s, before, m.safe_margin, m.safe_raise_weight) + m.retention_weight * kept

    def __call__(self, spans: dict[str, Tensor], responses: dict[str, Tensor]) -> tuple[Tensor, dict]:
        """(total, per-condition parts) over batches of span and response coordinates (same rows)."""
        parts = {name: self.span_loss(name, span) for name, span in spans.items()}
        parts |= {
            f"{name}_response": self.response_loss(name, zr, spans[name]) for name, zr in responses.items()
        }
        total = sum(parts.values(), torch.zeros(()))
        return total, {name: float(v.detach()) for name, v in parts.items()}

    def summary(self, spans: dict[str, Tensor], responses: dict[str, Tensor]) -> dict:
        """The objective over every given example; per condition the mean refusal read-outs before → after
        the map (t_post; responses in t_post's gaps above harmless responses) and the mean squared movement
        ‖(f(z) − z) / σ‖² of t_post and of response tokens (what retention charges on safe prompts)."""
        with torch.no_grad():
            total, parts = self(spans, responses)
            readouts = {name: self._readouts(span, responses.get(name)) for name, span in spans.items()}
        return parts | {"total": float(total), "refusal_readouts": readouts}

    def _readouts(self, span: Tensor, zr: Tensor | None) -> dict:
        z, mapped = span[:, -1], self.map_span(span)

        def t_post(x):  # mean refusal read-out at t_post, in harmful-harmless gaps
            return round(float(self.standardised(x)[:, -1, 1].mean()), 3)

        row = {
            "t_post": [t_post(z), t_post(mapped)],
            "t_post_movement": round(float(retention(mapped[:, -1], z[:, -1], self.sigma_span[-1])), 4),
        }
        if zr is not None:
            zr, mapped_r = self.map_responses(zr, span)
            row["responses"] = [round(float(self.response_readout(x).mean()), 3) for x in (zr, mapped_r)]
            row["response_movement"] = round(float(retention(mapped_r, zr, self.plane_map.sigma[-1])), 4)
        return row


def fit_slot_objective(
    plane_map: PlaneMap,
    d: Directions,
    slot: int,
    coords: dict[str, Tensor],
    responses: dict[str, Tensor] | None,
    margins: Margins,
    min_separation: float,
) -> SlotObjective:
    """Set the map's standardisation (μ, σ per span map, of the context and of the response map) from the
    training coordinates and build its objective: which read-outs are constrained (HARC's two reads;
    position maps also every position and axis where plain harmful and harmless prompts differ by
    `min_separation` pooled standard deviations; only edited tokens) and on what scale."""
    this_slot = {name: z[:, -1:] for name, z in coords.items()}
    e, lo, hi, separation = standardisation(d, slot, this_slot)
    n_pos = lo.shape[0]
    roles = torch.arange(n_pos)
    edited = roles >= int(plane_map.first_edited_role)
    n_span_maps = plane_map.n_roles - (1 if responses is not None else 0)
    reads = torch.zeros(n_pos, 2, dtype=torch.bool)
    if n_span_maps > 1:
        reads |= separation >= min_separation
    reads[0, 0] = reads[-1, 1] = True
    reads &= edited[:, None]
    span_maps = plane_map.map_index(roles, (n_pos,))
    every = torch.cat([z[:, -1] for z in coords.values()])  # [prompt, position, 2], every condition
    resp_lo = None
    with torch.no_grad():
        for m in range(n_span_maps):  # one map: its positions pooled
            own = every[:, (span_maps == m) & edited].reshape(-1, 2)
            plane_map.mu[m], plane_map.sigma[m] = own.mean(0), own.std(0).clamp_min(1e-6)
        if plane_map.n_context:
            every_read = torch.cat([z.flatten(1, 2) for z in coords.values()])  # [prompt, context, 2]
            plane_map.context_mu.copy_(every_read.mean(0))
            plane_map.context_sigma.copy_(every_read.std(0).clamp_min(1e-6))
        if responses is not None:
            valid = {name: ~torch.isnan(z[..., 0]) for name, z in responses.items()}
            if "harmless" not in valid or not valid["harmless"].any():
                raise HarcError("no harmless response tokens to anchor the response map on")
            pooled = torch.cat([z[valid[name]] for name, z in responses.items()])
            resp_lo = oblique_coordinates(e, responses["harmless"][valid["harmless"]]).mean(0)[1]
            plane_map.mu[-1], plane_map.sigma[-1] = pooled.mean(0), pooled.std(0).clamp_min(1e-6)
    return SlotObjective(plane_map, e, lo, hi, separation, reads, resp_lo, margins)
