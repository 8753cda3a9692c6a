"""The plane at one layer slot: its two bases and the coordinates of residuals in them.

- **oblique** (the paper's view): projections on the unit directions, `(x·v̂_harm, x·v̂_ref)`. The
  axes are not orthogonal when c = cos(v_harm, v_ref) ≠ 0, so they share part of what they measure.
- **orthonormal** (what an intervention confined to the plane edits): `(x·e₁, x·e₂)` with the
  Gram–Schmidt basis e₁ = v̂_harm, e₂ = (v̂_ref − c·v̂_harm)/√(1 − c²). The plane component of x is
  e₁(x·e₁) + e₂(x·e₂). A plane with |c| > 0.99 is degenerate and refused (`HarcError`).

The **plane view** of a prompt reads axis 1 at t_inst (where harmfulness is read) and axis 2 at t_post
(where refusal is read), as in METHOD §2; in the oblique basis that is `(h_inst·v̂_harm, h_post·v̂_ref)`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from einops import einsum
from jaxtyping import Float
from torch import Tensor

from ..directions.artifact import Directions
from ..errors import HarcError
from ..shapes import Direction

MAX_ABS_COS = 0.99
PLANE_POSITIONS = ("t_inst", "t_post")
REFERENCE = "harmful"
HARMLESS = "harmless"
BASES = ("oblique", "orthonormal")
AXIS_TITLES = {
    "oblique": ("harmfulness: h(t_inst)·v̂_harm", "refusal: h(t_post)·v̂_ref"),
    "orthonormal": ("e₁ = v̂_harm: h(t_inst)·e₁", "e₂ = v̂_ref ⟂ v̂_harm: h(t_post)·e₂"),
}


def unit_vector(v: Tensor, name: str, slot: int) -> Tensor:
    """`v` normalised in float64; `HarcError` when it holds NaN or inf or is zero."""
    v = v.detach().double().cpu()
    norm = v.norm()
    if not torch.isfinite(v).all():
        raise HarcError(f"direction '{name}' at slot {slot} holds NaN or inf: recompute the directions")
    if norm < 1e-8:
        raise HarcError(
            f"direction '{name}' is zero at slot {slot} (e.g. the embedding slot, where t_post is the same "
            "token in every prompt): choose another layer slot"
        )
    return v / norm


@dataclass(frozen=True)
class PlaneBasis:
    """The plane at one slot: unit directions (oblique axes) and an orthonormal basis of their span."""

    slot: int
    names: tuple[str, str]
    units: Float[Tensor, "plane d_model"]  # rows v̂_a, v̂_b (float64)
    basis: Float[Tensor, "plane d_model"]  # rows e₁ = v̂_a, e₂ = (v̂_b − c v̂_a)/√(1 − c²) (float64)
    cos: float

    def oblique(self, x: Float[Tensor, "*rest d_model"]) -> Float[Tensor, "*rest plane"]:
        """Projections on the unit directions: (x·v̂_a, x·v̂_b), float64."""
        return einsum(x.double(), self.units.to(x.device), "... d_model, plane d_model -> ... plane")

    def orthonormal(self, x: Float[Tensor, "*rest d_model"]) -> Float[Tensor, "*rest plane"]:
        """Coordinates in the orthonormal basis: (x·e₁, x·e₂), float64."""
        return einsum(x.double(), self.basis.to(x.device), "... d_model, plane d_model -> ... plane")


def plane_basis(
    a: Direction,
    b: Direction,
    *,
    slot: int = -1,
    names: tuple[str, str] = ("v_harm", "v_ref"),
    max_abs_cos: float = MAX_ABS_COS,
) -> PlaneBasis:
    """Gram–Schmidt basis of span{a, b}; `HarcError` when the two are (nearly) collinear."""
    ua, ub = unit_vector(a, names[0], slot), unit_vector(b, names[1], slot)
    c = float(ua @ ub)
    if abs(c) > max_abs_cos:
        raise HarcError(
            f"{names[0]} and {names[1]} are nearly collinear at slot {slot} (cos = {c:.4f}, |cos| > "
            f"{max_abs_cos}): they span no plane there; choose another layer slot or recompute the directions"
        )
    e2 = ub - c * ua
    e2 = e2 / e2.norm()
    return PlaneBasis(slot, names, torch.stack([ua, ub]), torch.stack([ua, e2]), c)


def basis_from_directions(
    directions: Directions, slot: int, names: tuple[str, str] = ("v_harm", "v_ref")
) -> PlaneBasis:
    """The plane basis at `slot` from the artifact's unit directions (default v_harm, v_ref)."""
    return plane_basis(
        directions.unit(names[0], slot), directions.unit(names[1], slot), slot=slot, names=names
    )


@dataclass(frozen=True)
class PlaneCoordinates:
    """Coordinates of a prompt set in the plane at one slot, in both bases, at each position."""

    basis: PlaneBasis
    positions: tuple[str, ...]
    oblique: Float[Tensor, "prompt npos plane"]
    orthonormal: Float[Tensor, "prompt npos plane"]

    @property
    def slot(self) -> int:
        """The layer slot of these coordinates."""
        return self.basis.slot

    def at(self, position: str, kind: str = "oblique") -> Float[Tensor, "prompt plane"]:
        """Coordinates [prompt, 2] at `position` in the `oblique` or `orthonormal` basis."""
        if position not in self.positions:
            raise HarcError(f"position '{position}' has no coordinates; have {self.positions}")
        return self._coords(kind)[:, self.positions.index(position)]

    def view(self, kind: str = "oblique") -> Float[Tensor, "prompt plane"]:
        """The plane view: axis 1 read at t_inst, axis 2 at t_post (the one position if only one)."""
        coords = self._coords(kind)
        if len(self.positions) == 1:
            return coords[:, 0]
        x = self.at("t_inst", kind)[:, 0]
        y = self.at("t_post", kind)[:, 1]
        return torch.stack([x, y], dim=-1)

    def _coords(self, kind: str) -> Tensor:
        if kind not in BASES:
            raise HarcError(f"basis must be one of {BASES}, got '{kind}'")
        return self.oblique if kind == "oblique" else self.orthonormal


def plane_coordinates(
    resid: Float[Tensor, "prompt npos d_model"],
    directions: Directions | PlaneBasis,
    slot: int | None = None,
    *,
    positions: Sequence[str] = PLANE_POSITIONS,
    names: tuple[str, str] = ("v_harm", "v_ref"),
) -> PlaneCoordinates:
    """Oblique and orthonormal coordinates of residuals `resid[prompt, position, d_model]` read at
    `slot` (e.g. `acts.resid[:, acts.layers.index(slot)]` with positions t_inst, t_post)."""
    if isinstance(directions, PlaneBasis):
        basis = directions
        if slot is not None and slot != basis.slot:
            raise HarcError(f"the basis is for slot {basis.slot}, not slot {slot}")
    else:
        if slot is None:
            raise HarcError("pass the layer slot the residuals were read at")
        basis = basis_from_directions(directions, slot, names)
    if resid.shape[1] != len(positions):
        raise HarcError(f"resid has {resid.shape[1]} positions, but positions are {tuple(positions)}")
    return PlaneCoordinates(basis, tuple(positions), basis.oblique(resid), basis.orthonormal(resid))


def plane_basis_matrix(d: Directions, slot: int) -> Float[Tensor, "d_model 2"]:
    """U: the orthonormal basis of span{v_harm, v_ref} at `slot` as columns (harmfulness first)."""
    return basis_from_directions(d, slot).basis.T.float()
