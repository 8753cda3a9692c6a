"""The same prompts scored under many edits (a per-layer sweep such as the refusal-direction
selection) without repeating the work the edits share.

Two savings, both exact up to float rounding:
- the token prefix every prompt starts with (the chat template's system turn and user header, a
  third to a half of a short prompt) runs once per edit, batch size 1, and every batch attends to its
  key/value cache;
- an edit that starts at block s (an activation addition at s) resumes from the unedited residual at
  s, captured once for all such slots, so the blocks below s are not run again.
An edit from the embedding on (a directional ablation everywhere) gets the first saving only.

With `pack=True` each batch's prompts also run back to back in one row instead of padded to the
longest (`data.chat.pack_batch`): on the dev prompts padding was half to two thirds of a batch's tokens.
Packing is exact for hooks that act position by position (an ablation, an addition), not for an
intervention that reads each prompt's span as a whole (the coupling).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import torch
from jaxtyping import Float
from torch import Tensor

from ..data.chat import Batch, ChatPrompt, left_pad, pack_batch, pad_token_id
from ..errors import HarcError
from ..model.hooked import HarcModel, HookFn, resid_hook_name
from .forward import StopForward, forward_batch, shared_prefix, split_prefix

Hooks = Sequence[tuple[str, HookFn]]


@dataclass
class _Chunk:
    rows: list[int]  # indices into the sweep's chats
    batch: Batch  # their tokens after the shared prefix, left-padded or packed
    resid: dict[int, Tensor]  # slot -> the unedited residual there [batch, pos, d_model]


class PromptSweep:
    """Prompts prepared once for many forward passes: batches (sorted by length), the shared prefix and
    the unedited residuals at `resume_slots`. `last_logprobs(hooks, from_slot=s)` is then what
    `last_token_logprobs(model, chats, hooks=hooks)` returns, computed from block s on. `pack`: the
    batches are packed rows (see the module's note: position-wise hooks only), where the model's
    attention takes a custom mask (sdpa, eager) and every prompt fits its sliding window."""

    def __init__(
        self,
        model: HarcModel,
        chats: Sequence[ChatPrompt],
        *,
        batch_size: int = 16,
        resume_slots: Sequence[int] = (),
        share_prefix: bool = True,
        pack: bool = False,
    ):
        if not chats:
            raise HarcError("no prompts to score")
        self.model, self.n = model, len(chats)
        self.prefix_ids, rest = split_prefix(model, chats, share_prefix)
        self.packed = pack and _packable(model, len(self.prefix_ids) + max(c.n_prompt for c in rest))
        pad = pad_token_id(model.tokenizer)
        order = sorted(range(len(chats)), key=lambda i: -chats[i].n_prompt)
        self.chunks = []
        for rows in _groups(order, [c.n_prompt for c in rest], batch_size, self.packed):
            chunk = [rest[i] for i in rows]
            batch = pack_batch(chunk) if self.packed else left_pad(chunk, pad, with_response=False)
            self.chunks.append(_Chunk(rows, batch, {}))
        self.resume_slots = tuple(sorted(set(resume_slots)))
        if self.resume_slots:
            self._capture_unedited(self.resume_slots)

    def last_logprobs(
        self, hooks: Hooks = (), *, from_slot: int | None = None
    ) -> Float[Tensor, "prompt vocab"]:
        """log-softmax of the next-token distribution at t_post under `hooks`, float32 on CPU, in the
        chats' order. `from_slot`: every hook acts at or above it; start there from the unedited
        residual (the slot must be one of `resume_slots`)."""
        if from_slot is not None and from_slot not in self.resume_slots:
            raise HarcError(f"slot {from_slot} was not prepared for resuming (have {self.resume_slots})")
        prefix = shared_prefix(self.model, self.prefix_ids, hooks)
        parts, rows = [], []
        for chunk in self.chunks:
            resume = None if from_slot is None else (from_slot, chunk.resid[from_slot])
            logits = forward_batch(
                self.model, chunk.batch, hooks, logits="last", prefix=prefix, resume=resume
            )
            parts.append(torch.log_softmax(logits.float(), dim=-1).cpu())
            rows += chunk.rows
        stacked = torch.cat(parts)
        out = torch.empty_like(stacked)
        out[torch.tensor(rows)] = stacked
        return out

    def _capture_unedited(self, slots: tuple[int, ...]) -> None:
        """One unedited pass per batch, stopped after the deepest slot, keeping the residual at each."""
        prefix = shared_prefix(self.model, self.prefix_ids)
        if any(s >= self.model.n_layers for s in slots):
            raise HarcError(f"resume slots must be block inputs 0..{self.model.n_layers - 1}")
        names = {resid_hook_name(s, self.model.n_layers): s for s in slots}

        def keep(resid: Tensor, site, chunk: _Chunk) -> None:
            slot = names[site.name]
            chunk.resid[slot] = resid.detach().cpu()
            if slot == slots[-1]:
                raise StopForward

        for chunk in self.chunks:
            hooks = [(name, partial(keep, chunk=chunk)) for name in names]
            forward_batch(self.model, chunk.batch, hooks, prefix=prefix)


PACK_TOKENS = 1024  # a packed row's mask and attention scores grow with the square of its length


def _groups(order: list[int], lengths: list[int], batch_size: int, packed: bool) -> list[list[int]]:
    """`order` in groups of `batch_size`; a packed group also closes before it passes `PACK_TOKENS`."""
    groups: list[list[int]] = []
    tokens = 0
    for i in order:
        full = groups and (len(groups[-1]) == batch_size or (packed and tokens + lengths[i] > PACK_TOKENS))
        if not groups or full:
            groups.append([])
            tokens = 0
        groups[-1].append(i)
        tokens += lengths[i]
    return groups


def _packable(model: HarcModel, longest: int) -> bool:
    """Whether a packed row gives what padded rows give: the attention adds the mask it is handed
    (flash attention would ignore it) and no sliding window is shorter than a whole prompt."""
    window = getattr(model.text_config, "sliding_window", None)
    return model.hf.config._attn_implementation in ("sdpa", "eager") and (window is None or longest <= window)


def last_token_logprobs(
    model: HarcModel, chats: Sequence[ChatPrompt], *, hooks: Hooks = (), batch_size: int = 16
) -> Float[Tensor, "prompt vocab"]:
    """log-softmax of the next-token distribution at the last prompt token (t_post), float32 on CPU,
    every pass run whole from the embeddings (a `PromptSweep` that shares nothing)."""
    return PromptSweep(model, chats, batch_size=batch_size, share_prefix=False).last_logprobs(hooks)
