"""Edits of the residual stream, as lists of `(hook name, fn)` for `HarcModel.hooks`: directional
ablation, activation addition, and the `Variant` that bundles hooks with a context.

Every intervention is a hook list, so it applies to a plain forward and to every decoding step of
`generate`, and it is gone when the `hooks` context exits.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..errors import HarcError
from ..shapes import Direction
from .hooked import HarcModel, HookFn


def _unit(direction: Tensor) -> Tensor:
    norm = direction.norm()
    if not torch.isfinite(direction).all() or norm < 1e-8:
        raise HarcError("direction is zero or non-finite; cannot ablate or steer along it")
    return direction / norm


def project_out(resid: Tensor, unit: Tensor) -> Tensor:
    """`h − (h·r̂) r̂` in the residual's dtype."""
    r = unit.to(device=resid.device, dtype=resid.dtype)
    return resid - (resid @ r)[..., None] * r


def ablation_hooks(
    model: HarcModel,
    direction: Direction,
    layers: Sequence[int] | None = None,
    residual: bool = False,
) -> list[tuple[str, HookFn]]:
    """Directional ablation (Arditi et al.): remove r̂ from the embedding and from every attention and
    MLP output, so no layer can write along r̂: `h ← h − (h·r̂) r̂` everywhere. With `layers`, only
    those blocks' outputs (plus the embedding) are ablated: e.g. `range(l)` removes r̂ from everything
    upstream of block l, which is what a jailbreak that suppresses one direction does. With
    `residual=True` the residual stream itself is also projected at every chosen block's input, which
    also removes what any other hook wrote into it (the strongest white-box attack)."""
    unit = _unit(direction.detach().float())
    fn = lambda resid, site: project_out(resid, unit)  # noqa: E731
    names = ["blocks.0.hook_resid_pre"]
    for layer in range(model.n_layers) if layers is None else layers:
        names += [f"blocks.{layer}.hook_attn_out", f"blocks.{layer}.hook_mlp_out"]
        if residual and layer > 0:
            names.append(f"blocks.{layer}.hook_resid_pre")
    return [(n, fn) for n in names]


def addition_hooks(
    model: HarcModel,
    direction: Direction,
    slot: int,
    coeff: float = 1.0,
    *,
    span_only: bool = False,
) -> list[tuple[str, HookFn]]:
    """Activation addition (ActAdd): `h ← h + c·v` at the input of block `slot`, every position.
    Pass the raw (un-normalised) difference-in-means vector to add it at its natural scale.

    `span_only` adds it only where the coupling edits: t_inst … t_post and every response token. With
    v = raw v_ref (in the plane) it is the push a confined coupling at `slot` gives a prompt it classes as
    harmful with certainty; its attack success on harmful-like prompts bounds what any plane map at that
    slot can restore (`harc eval --push-ref c`)."""
    if not 0 <= slot < model.n_layers:
        raise HarcError(f"activation addition needs a block input slot 0..{model.n_layers - 1}, got {slot}")
    if not torch.isfinite(direction).all():
        raise HarcError("steering vector is non-finite")
    vec = (coeff * direction.detach()).float()

    def fn(resid, site):
        weights = site.span_weights(resid) if span_only else None  # None: every position
        v = vec.to(resid.device, resid.dtype)
        return resid + (v if weights is None else v * weights)

    return [(f"blocks.{slot}.hook_resid_pre", fn)]


@dataclass(frozen=True)
class PromptDefence:
    """An input-side defence: what the model is sent in place of each request. `system_prompt` replaces
    the evaluation's system prompt (None: keep it); `copies` gives the user turns sent for one request:
    one for a rewrite (Self-Reminder), several for an ensemble whose answers the judge votes on
    (SmoothLLM: the request counts as refused unless more than half of the copies are answered)."""

    name: str
    system_prompt: str | None = None

    def copies(self, instruction: str, key: str) -> list[str]:
        """The user turns sent for `instruction` (`key`: the request's id, which seeds any randomness)."""
        return [instruction]


@dataclass
class Variant:
    """One way to run the model: hooks, plus a context entered around every use (e.g. a LoRA adapter
    loaded, or the same adapter disabled for the base side of a comparison), plus an optional input-side
    defence that changes what the model is sent (`prompts`)."""

    hooks: Sequence[tuple[str, HookFn]] = ()
    context: Callable[[], AbstractContextManager] = field(default=nullcontext)
    name: str = "base"
    prompts: PromptDefence | None = None
