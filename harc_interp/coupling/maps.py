"""The confined coupling intervention: a learned map on harmfulness–refusal plane coordinates.

At each chosen layer slot l (a block input), for every position from t_inst to the last prompt token
and every response position (all decoding steps):

    h' = h + U (f(Uᵀh) − Uᵀh)

U [d_model, 2] is a frozen orthonormal basis of span{v_harm, v_ref} at l (U[:, 0] = v̂_harm,
U[:, 1] = the part of v̂_ref orthogonal to it), and f: R² → R² is a small learned map, the identity at
initialisation, that couples the two coordinates (high harmfulness raises refusal and vice versa).
Only f trains; the model is frozen. h' − h lies in the plane by construction, so everything
orthogonal to the plane is untouched.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from jaxtyping import Float
from torch import Tensor, nn

from ..artifacts import check_schema, load_tensors, now, read_json, save_tensors, stamp_schema, write_json
from ..directions.artifact import Directions
from ..errors import HarcError
from ..model.hooked import HarcModel, HookFn, HookSite, Span
from ..plane.basis import plane_basis_matrix

# coupling.json of every `harc train` output (both modes). 2: schema recorded, `kind` and the edited
# `slots` in both modes. Older subspace couplings are refused (retrain them), older LoRA outputs read.
SCHEMA_VERSION = 2
_MAP_STATE = (
    "first_response_role",
    "first_edited_role",
    "context_mu",
    "context_sigma",
    "context_roles",
    "w_context",
)


class PlaneMap(nn.Module):
    """f(z) = z + σ ⊙ g((z − μ) / σ): a residual MLP in standardised plane coordinates, one per span
    role when `n_roles` > 1 (role r = the r-th token from t_inst: t_inst, each template-suffix token;
    later roles, i.e. response tokens, use the last one, t_post's). The template tokens are the same in
    every prompt but sit in different parts of the plane, so a map of its own for each sees them apart.

    With `first_response_role` ≥ 0 the last map is a response map: it serves every role from that one
    on (the response tokens) and every decoding step, and the others serve the span tokens (clamped).
    Response tokens sit elsewhere in the plane than any prompt token, so a map trained on their own
    coordinates replaces extrapolating t_post's.

    With `n_context` > 0 the map also reads `n_context` plane coordinates of span tokens (t_inst … t_post,
    at its own slot and possibly at earlier ones; `context` [*batch, n_context, 2], standardised by
    `context_mu`/`context_sigma`; `context_roles` gives each entry's span role): f(z, c). A span token
    reads only the span tokens at or before it (the rest of `c` is masked to the mean), so the edit is
    causal at every position; response tokens read the whole span. Only roles from
    `first_edited_role` on are edited. One token's coordinates cannot tell a harmful prompt whose refusal
    was suppressed upstream from a harmless one at t_post; the template span still can. The edit still
    lies in the plane.

    The last layer starts at zero, so f is exactly the identity at initialisation; μ, σ (frozen, per
    role) put the coordinates on a unit scale so one learning rate fits every layer."""

    def __init__(
        self,
        mu: Tensor,
        sigma: Tensor,
        hidden: int = 32,
        first_response_role: int = -1,
        n_context: int = 0,
        first_edited_role: int = 0,
        context_roles: Tensor | None = None,
    ):
        super().__init__()
        mu, sigma = mu.float().reshape(-1, 2), sigma.float().reshape(-1, 2)
        n_roles = mu.shape[0]
        if first_response_role >= 0 and n_roles < 2:
            raise HarcError("a response map needs at least one span map besides it")
        self.register_buffer("mu", mu.clone())
        self.register_buffer("sigma", sigma.clamp_min(1e-6).clone())
        self.register_buffer("first_response_role", torch.tensor(first_response_role))
        self.register_buffer("first_edited_role", torch.tensor(first_edited_role))
        self.register_buffer("context_mu", torch.zeros(n_context, 2))
        self.register_buffer("context_sigma", torch.ones(n_context, 2))
        roles = torch.arange(n_context) if context_roles is None else context_roles.long().clone()
        self.register_buffer("context_roles", roles)
        self.w_context = nn.Parameter(torch.zeros(n_roles, 2 * n_context, hidden))
        self.w_in = nn.Parameter(torch.zeros(n_roles, 2, hidden))
        self.b_in = nn.Parameter(torch.zeros(n_roles, hidden))
        self.w_out = nn.Parameter(torch.zeros(n_roles, hidden, 2))
        self.b_out = nn.Parameter(torch.zeros(n_roles, 2))

    @property
    def n_roles(self) -> int:
        """How many position roles (span tokens, the response) the map has parameters for."""
        return self.mu.shape[0]

    def map_index(self, roles: Tensor | None, shape: Sequence[int], device=None) -> Tensor:
        """Which map serves each point: span roles clamped to the span maps, responses the last map."""
        last, first_response = self.n_roles - 1, int(self.first_response_role)
        if roles is None:
            return torch.full(tuple(shape), last, dtype=torch.long, device=device)
        if first_response < 0:
            return roles.clamp(0, last)
        return torch.where(roles >= first_response, last, roles.clamp(0, last - 1))

    @property
    def n_context(self) -> int:
        """How many context coordinates (span tokens times read slots) the map reads."""
        return self.context_mu.shape[0]

    def forward(
        self,
        z: Float[Tensor, "*batch 2"],
        roles: Tensor | None = None,
        context: Float[Tensor, "*batch n_context 2"] | None = None,
    ) -> Float[Tensor, "*batch 2"]:
        """`roles` [*batch] (span roles, long) pick each point's map; None: decoding steps (the last map).
        `context`: the span tokens' coordinates each point reads (maps with `n_context` > 0 only)."""
        r = self.map_index(roles, z.shape[:-1], z.device)
        mu, sigma = self.mu[r], self.sigma[r]
        u = (z - mu) / sigma
        pre = torch.einsum("...k,...kh->...h", u, self.w_in[r]) + self.b_in[r]
        if self.n_context:
            if context is None or context.shape[-2:] != (self.n_context, 2):
                raise HarcError(f"this map reads {self.n_context} span tokens' coordinates: pass `context`")
            c = (context - self.context_mu) / self.context_sigma
            if roles is not None:  # causal: a span token sees the span only up to itself
                visible = self.context_roles.to(c.device) <= roles[..., None]
                c = c * visible[..., None]
            c = c.flatten(-2)
            pre = pre + torch.einsum("...c,...ch->...h", c, self.w_context[r])
        hid = torch.tanh(pre)
        return z + sigma * (torch.einsum("...h,...hk->...k", hid, self.w_out[r]) + self.b_out[r])


class CouplingIntervention(nn.Module):
    """Plane maps at a few layer slots; `hooks(model)` applies them, `.apply(model)` as a context.

    Span-reading maps (`n_span` > 0) read the plane coordinates of the n_span template-span tokens at
    their own slot and, with `read_slots`, at those earlier slots too (in each slot's own plane): the
    harmfulness–refusal trajectory of the span. A jailbreak that looks harmless in one layer's plane is
    told apart by the path it took there. Reading more never widens the edit: it stays U·(…) at `slots`."""

    def __init__(
        self,
        slots: Sequence[int],
        bases: Tensor,
        mus: Tensor,
        sigmas: Tensor,
        hidden: int = 32,
        meta: dict | None = None,
        first_response_role: int = -1,
        n_span: int = 0,
        first_edited_role: int = 0,
        read_slots: Sequence[int] = (),
        read_bases: Tensor | None = None,
    ):
        super().__init__()
        if len(slots) != bases.shape[0] or bases.shape[-1] != 2:
            raise HarcError(
                f"need one [d_model, 2] basis per slot, got {tuple(bases.shape)} for {len(slots)} slots"
            )
        self.slots = tuple(int(s) for s in slots)
        self.read_slots = tuple(int(s) for s in read_slots)
        if self.read_slots and (
            not n_span or min(self.read_slots) < 0 or max(self.read_slots) >= min(self.slots)
        ):
            raise HarcError(
                f"read slots {self.read_slots} need a span-reading coupling (span_context) and must be "
                f"block inputs upstream of its slots {self.slots}"
            )
        if read_bases is None:
            read_bases = torch.zeros(len(self.read_slots), bases.shape[1], 2)
        if read_bases.shape != (len(self.read_slots), bases.shape[1], 2):
            raise HarcError(f"need one [d_model, 2] basis per read slot, got {tuple(read_bases.shape)}")
        self.hidden = hidden
        self.register_buffer("bases", bases.float().clone())  # [slot, d_model, 2], frozen
        self.register_buffer("read_bases", read_bases.float().clone())  # [read slot, d_model, 2]
        n_read = len(self.read_slots) + 1  # context order: each read slot's span, then the own slot's
        self.maps = nn.ModuleList(
            PlaneMap(
                m,
                s,
                hidden,
                first_response_role,
                n_span * n_read,
                first_edited_role,
                torch.arange(n_span).repeat(n_read),
            )
            for m, s in zip(mus, sigmas, strict=True)
        )
        self.meta = dict(meta or {})

    @classmethod
    def from_directions(
        cls,
        d: Directions,
        slots: Sequence[int],
        mus: Tensor,
        sigmas: Tensor,
        hidden: int = 32,
        seed: int = 0,
        first_response_role: int = -1,
        n_span: int = 0,
        first_edited_role: int = 0,
        read_slots: Sequence[int] = (),
    ) -> CouplingIntervention:
        bases = torch.stack([plane_basis_matrix(d, s) for s in slots])
        read_bases = torch.stack([plane_basis_matrix(d, s) for s in read_slots]) if read_slots else None
        gen = torch.Generator().manual_seed(seed)
        module = cls(
            slots,
            bases,
            mus,
            sigmas,
            hidden,
            meta={k: d.meta.get(k) for k in ("model", "model_fingerprint", "template_hash")},
            first_response_role=first_response_role,
            n_span=n_span,
            first_edited_role=first_edited_role,
            read_slots=read_slots,
            read_bases=read_bases,
        )
        n_context = module.maps[0].n_context
        fan_in = 2 + 2 * n_context  # unit-variance pre-activations on standardised inputs
        with torch.no_grad():
            for m in module.maps:
                m.w_in.copy_(torch.randn(m.w_in.shape, generator=gen) / fan_in**0.5)
                m.b_in.copy_(torch.randn(m.b_in.shape, generator=gen) * 0.5)
                if n_context:
                    m.w_context.copy_(torch.randn(m.w_context.shape, generator=gen) / fan_in**0.5)
        return module

    def edit(
        self,
        i: int,
        resid: Float[Tensor, "batch pos d_model"],
        weights: Tensor | None = None,
        roles: Tensor | None = None,
        context: Tensor | None = None,
    ) -> Tensor:
        """h + U (f(Uᵀh) − Uᵀh), only where `weights` is 1 (all positions when None) and the role is one
        the map edits; `roles` [batch, pos] are the span roles (None: every position is a response token);
        `context` [batch, pos, n_context, 2] the span coordinates a span-reading map sees at each position."""
        plane_map = self.maps[i]
        basis = self.bases[i].to(resid.device)
        z = resid.float() @ basis
        delta = (plane_map(z, roles, context) - z) @ basis.T
        if weights is not None:
            delta = delta * weights.float()
        if roles is not None and int(plane_map.first_edited_role) > 0:
            delta = delta * (roles >= plane_map.first_edited_role)[..., None]
        return (resid.float() + delta).to(resid.dtype)

    @property
    def n_span(self) -> int:
        """Template span tokens (t_inst … t_post) a span-reading map reads at each slot."""
        return self.maps[0].n_context // (len(self.read_slots) + 1)

    def _span_coordinates(self, basis: Tensor, resid: Tensor, roles: Tensor) -> Tensor:
        """[batch, n_span, 2]: the span tokens' coordinates in `basis` (a prompt pass, roles known)."""
        n_span = self.n_span
        present = torch.stack([(roles == r).any(1) for r in range(n_span)], 1)
        if not present.all():
            raise HarcError(f"a span-reading coupling needs all {n_span} span tokens in every prompt")
        pos = torch.stack([(roles == r).int().argmax(1) for r in range(n_span)], 1)  # [batch, n_span]
        z = resid.float() @ basis.to(resid.device)
        return z[torch.arange(resid.shape[0])[:, None], pos].detach()

    def span_context(self, i: int, span: Span | None, resid: Tensor) -> Tensor:
        """[batch, pos, n_context, 2]: the span coordinates the map at slot i reads (at each read slot, then
        its own), from this pass when it holds the prompt (kept in the batch's `span.memory` for its
        decoding steps), else from that memory."""
        if span is None:
            raise HarcError(
                "this coupling reads the prompt's template span, so it runs only through harc_interp's "
                "forward and generate helpers, which declare the span (model.span)"
            )
        key = ("coupling_span", id(self), i)
        roles = span.roles_for(resid)
        if roles is not None:
            read = [span.memory.get(("coupling_read", id(self), s)) for s in self.read_slots]
            if any(r is None or r.shape[0] != resid.shape[0] for r in read):
                raise HarcError(f"the span at read slots {self.read_slots} was not recorded on this pass")
            coords = torch.cat([*read, self._span_coordinates(self.bases[i], resid, roles)], 1)
            span.memory[key] = coords
        else:
            coords = span.memory.get(key)
            if coords is None or coords.shape[0] != resid.shape[0]:
                raise HarcError(
                    "this batch's decoding step has no recorded prompt span: run the prompt first"
                )
        return coords[:, None].expand(-1, resid.shape[1], -1, -1)

    def hooks(self, model: HarcModel) -> list[tuple[str, HookFn]]:
        """The hooks that apply the coupling to `model` (checked against the model it was trained on)."""
        if self.meta.get("model_fingerprint") not in (None, model.fingerprint):
            raise HarcError(
                f"this coupling was trained on model '{self.meta.get('model')}', not on '{model.name}'"
            )
        if self.bases.shape[1] != model.d_model:
            raise HarcError(
                f"coupling width {self.bases.shape[1]} does not match the model's d_model {model.d_model}"
            )

        def hook_for(i: int) -> HookFn:
            def hook(resid: Tensor, site: HookSite):
                if _no_span_here(site, resid):
                    return None
                context = self.span_context(i, site.span, resid) if self.maps[i].n_context else None
                return self.edit(i, resid, site.span_weights(resid), site.span_roles(resid), context)

            return hook

        def reader_for(j: int) -> HookFn:
            def read(
                resid: Tensor, site: HookSite
            ):  # records the prompt's span at a read slot; edits nothing
                roles = site.span_roles(resid)
                if roles is not None and not _no_span_here(site, resid):
                    key = ("coupling_read", id(self), self.read_slots[j])
                    site.span.memory[key] = self._span_coordinates(self.read_bases[j], resid, roles)

            return read

        readers = [(f"blocks.{s}.hook_resid_pre", reader_for(j)) for j, s in enumerate(self.read_slots)]
        return readers + [(f"blocks.{s}.hook_resid_pre", hook_for(i)) for i, s in enumerate(self.slots)]

    @contextlib.contextmanager
    def apply(self, model: HarcModel) -> Iterator[HarcModel]:
        """Run the model with the coupling; the model is exactly restored on exit."""
        with model.hooks(self.hooks(model)):
            yield model

    def weights_digest(self) -> str:
        """A hash of the trained weights: what a cached evaluation of this coupling is keyed on (a
        retrain or a resume that ends in the same weights keeps the cache; different weights do not)."""
        digest = hashlib.sha256()
        for name, v in sorted(self.state_dict().items()):
            digest.update(name.encode() + v.detach().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()[:16]

    def save(self, out_dir: str | Path) -> Path:
        """Write coupling.safetensors and coupling.json to `out_dir` (atomically); returns the folder."""
        out_dir = Path(out_dir)
        save_tensors(
            out_dir / "coupling.safetensors", {k: v.detach().cpu() for k, v in self.state_dict().items()}
        )
        meta = self.meta | {
            "kind": "subspace",
            "slots": list(self.slots),
            "read_slots": list(self.read_slots),
            "hidden": self.hidden,
            "saved": now(),
        }
        write_json(out_dir / "coupling.json", stamp_schema(meta, "coupling", SCHEMA_VERSION))
        return out_dir

    @classmethod
    def load(cls, out_dir: str | Path) -> CouplingIntervention:
        out_dir = Path(out_dir)
        meta = read_json(out_dir / "coupling.json")
        check_schema(meta, "coupling", SCHEMA_VERSION, out_dir / "coupling.json", "harc train")
        state = load_tensors(out_dir / "coupling.safetensors")
        if "bases" not in state or "maps.0.w_in" not in state:
            raise HarcError(f"{out_dir}/coupling.safetensors is not a coupling artifact (no bases or maps)")
        needed = ["read_bases", *(f"maps.{i}.{k}" for i in range(len(meta["slots"])) for k in _MAP_STATE)]
        if any(k not in state for k in needed) or "read_slots" not in meta:
            raise HarcError(
                f"{out_dir} holds a coupling saved by an older harc_interp (before response and span-reading "
                "maps): retrain it with `harc train`"
            )
        n, n_roles = len(meta["slots"]), state["maps.0.mu"].shape[0]
        read_slots = meta["read_slots"]
        module = cls(
            meta["slots"],
            state["bases"],
            torch.zeros(n, n_roles, 2),
            torch.ones(n, n_roles, 2),
            meta["hidden"],
            meta,
            int(state["maps.0.first_response_role"]),
            state["maps.0.context_mu"].shape[0] // (len(read_slots) + 1),
            int(state["maps.0.first_edited_role"]),
            read_slots,
            state["read_bases"],
        )
        module.load_state_dict(state)
        return module


def _no_span_here(site: HookSite, resid: Tensor) -> bool:
    """A pass with no span position (the template prefix every prompt shares, run once): the coupling
    edits and reads nothing there."""
    roles = site.span_roles(resid)
    return roles is not None and bool((roles < 0).all())
