"""The one forward pass under a declared span (optionally after a shared prefix's cache, or resumed at
a block), and the read-outs built on it: teacher-forced response log-probabilities and residuals, the
refusal score and KL. Next-token log-probabilities at t_post are in `sweep.py`.

Every forward pass of the package goes through `forward_batch`, so the span an intervention may edit
is always declared (`model.span`), hooks are always removed, and a capture hook can end the pass early
by raising `StopForward` once it has what it needs.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import partial

import torch
from jaxtyping import Float
from torch import Tensor

from ..data.chat import Batch, ChatPrompt, left_pad, pad_token_id
from ..errors import HarcError
from ..model.hooked import HarcModel, HookFn, resid_hook_name


class StopForward(Exception):
    """Raised by a capture hook once it has what it needs: the layers after it are not computed."""


@dataclass(frozen=True)
class SharedPrefix:
    """The key/value cache of a token prefix every prompt of a batch starts with (the chat template's
    system turn and user header), computed once under the same hooks: `forward_batch(batch, prefix=)`
    then runs only the tokens after it, which is what `batch` holds."""

    ids: tuple[int, ...]
    cache: object  # a transformers Cache over `ids`, batch size 1

    def for_batch(self, attention_mask: Tensor) -> tuple[object, Tensor]:
        """A copy of the cache for a batch with this mask over its own tokens (the pass appends to
        it), and the mask over prefix + tokens."""
        rows = len(attention_mask)
        cache = copy.deepcopy(self.cache)
        cache.batch_repeat_interleave(rows)
        ones = torch.ones(rows, len(self.ids), dtype=attention_mask.dtype)
        return cache, torch.cat([ones, attention_mask], 1)


def shared_prefix(
    model: HarcModel, ids: Sequence[int], hooks: Sequence[tuple[str, HookFn]] = ()
) -> SharedPrefix | None:
    """Run `ids` (outside every prompt's span) once under `hooks` and keep their key/value cache;
    None when there is no prefix."""
    if not ids:
        return None
    batch = Batch(
        torch.tensor([list(ids)]),
        torch.ones(1, len(ids), dtype=torch.long),
        torch.zeros(1, dtype=torch.long),
        torch.full((1, len(ids)), -1, dtype=torch.long),
    )
    out = _hf_forward(model, batch, hooks, grad=False, use_cache=True, logits_to_keep=1)
    return SharedPrefix(tuple(ids), out.past_key_values)


def shared_prefix_length(model: HarcModel, chats: Sequence[ChatPrompt], new_tokens: int = 0) -> int:
    """How many leading tokens every chat shares, up to the first one an intervention may edit
    (t_inst); 0 when a prefix cannot stand in for the whole sequence (a sliding attention window
    shorter than a chat with its response and `new_tokens` generated: the cached prefix would sit at
    other distances)."""
    window = getattr(model.text_config, "sliding_window", None)
    if window is not None and max(len(c.all_ids) for c in chats) + new_tokens > window:
        return 0
    first = chats[0].input_ids
    n = min(c.t_inst for c in chats)
    for c in chats[1:]:
        n = next((i for i in range(n) if c.input_ids[i] != first[i]), n)
    return n if n >= 2 else 0


def _after_prefix(chat: ChatPrompt, n: int) -> ChatPrompt:
    return replace(chat, input_ids=chat.input_ids[n:], t_inst=chat.t_inst - n)


def split_prefix(
    model: HarcModel, chats: Sequence[ChatPrompt], share: bool = True, new_tokens: int = 0
) -> tuple[tuple[int, ...], list[ChatPrompt]]:
    """The token prefix `chats` share (`shared_prefix_length`; empty when `share` is False or there is
    none) and each chat's tokens after it, its positions shifted to match."""
    n = shared_prefix_length(model, chats, new_tokens) if share and chats else 0
    return tuple(chats[0].input_ids[:n]) if n else (), [_after_prefix(c, n) for c in chats]


def forward_batch(
    model: HarcModel,
    batch: Batch,
    hooks: Sequence[tuple[str, HookFn]] = (),
    *,
    logits: str | int | None = None,
    grad: bool = False,
    prefix: SharedPrefix | None = None,
    resume: tuple[int, Tensor] | None = None,
    inputs_embeds: Tensor | None = None,
) -> Tensor | None:
    """One forward pass of a left-padded `Batch` with `hooks` and its span declared.

    `logits`: None (hooks collect what they need; the head runs on the last position at most),
    "last" ([batch, vocab] at the last position), "all" ([batch, pos, vocab]) or an int k ([batch, k,
    vocab] at the last k positions: a teacher-forced target's read-out without the head's cost over the
    whole prompt). A hook may end the pass early by raising `StopForward` (then nothing is returned).
    `grad` keeps the autograd graph (training through the model); otherwise the pass runs under no_grad.

    `prefix`: the batch holds the tokens after a `SharedPrefix` computed under the same hooks; they
    attend to its cache at the positions that follow it, as if each prompt were run whole.
    `resume=(slot, resid)`: start at block `slot` from `resid` (the residual there, [batch, pos,
    d_model], of an unedited pass of the same batch); every hook must act at or above `slot`.
    `inputs_embeds` ([batch, pos, d_model]) replaces the token embeddings of `batch.input_ids` (which
    still give the shape, mask and span): a gradient w.r.t. one-hot tokens flows through every hook."""
    last_k = isinstance(logits, int) and not isinstance(logits, bool)
    if not (logits in (None, "last", "all") or (last_k and logits >= 1)):
        raise HarcError(f"logits must be None, 'last', 'all' or a positive int, got {logits!r}")
    kwargs = {} if logits == "all" else {"logits_to_keep": logits if last_k else 1}
    if inputs_embeds is not None:
        kwargs["inputs_embeds"] = inputs_embeds
    if batch.packed:
        if logits not in (None, "last") or inputs_embeds is not None:
            raise HarcError("a packed batch reads the last position's logits only")
        kwargs |= _packed_kwargs(model, batch, prefix)
    elif prefix is not None:
        mask = batch.attention_mask
        cache, full_mask = prefix.for_batch(mask)
        kwargs |= {
            "past_key_values": cache,
            "use_cache": True,
            "attention_mask": full_mask,
            # each prompt's tokens continue right after the prefix; pads are masked (any position)
            "position_ids": len(prefix.ids) + (mask.cumsum(1) - 1).clamp(min=0),
        }
    resumed = contextlib.nullcontext()
    if resume is not None:
        model.hook_layers_from(hooks, resume[0])
        resumed = model.resumed(resume[0], resume[1].to(model.device, model.dtype))
    try:
        with resumed:
            out = _hf_forward(model, batch, hooks, grad=grad, **kwargs)
    except StopForward:
        return None
    if logits is None:
        return None
    if batch.packed:
        return out.logits[0]  # [prompt, vocab]: the head ran at each prompt's last token only
    return out.logits[:, -1] if logits == "last" else out.logits


def _packed_kwargs(model: HarcModel, batch: Batch, prefix: SharedPrefix | None) -> dict:
    """What the HF forward of a packed row (`pack_batch`) needs so that each prompt attends to the
    prefix and to its own earlier tokens only, at the positions it would have run whole: position ids
    restarting per prompt, an additive [1, 1, total, prefix + total] mask (the form both the sdpa and
    the eager attention add to their scores), and the head read at each prompt's last token."""
    lengths, n = batch.lengths, len(batch.lengths)
    segment = torch.repeat_interleave(torch.arange(n), lengths)
    n_prefix = len(prefix.ids) if prefix is not None else 0
    within = torch.arange(len(segment)) - batch.offset[segment]
    allowed = (segment[:, None] == segment[None, :]) & (within[:, None] >= within[None, :])
    allowed = torch.cat([torch.ones(len(segment), n_prefix, dtype=torch.bool), allowed], 1)
    mask = torch.zeros(allowed.shape, dtype=model.dtype).masked_fill(~allowed, torch.finfo(model.dtype).min)
    kwargs = {
        "attention_mask": mask[None, None],
        "position_ids": (n_prefix + within)[None],
        "logits_to_keep": batch.offset + lengths - 1,
    }
    if prefix is not None:
        kwargs |= {"past_key_values": copy.deepcopy(prefix.cache), "use_cache": True}
    return kwargs


def _hf_forward(model: HarcModel, batch: Batch, hooks, *, grad: bool, **kwargs):
    """The package's one call of the HF model: span declared, hooks registered, both removed after."""
    device = model.device
    kwargs = {"attention_mask": batch.attention_mask, "use_cache": False, **kwargs}
    if "inputs_embeds" not in kwargs:
        kwargs["input_ids"] = batch.input_ids
    kwargs = {k: v.to(device) if isinstance(v, Tensor) else v for k, v in kwargs.items()}
    with torch.set_grad_enabled(grad), model.hooks(hooks), model.span(batch.span_role.to(device)):
        return model.hf(**kwargs)


def response_logprobs(logits: Tensor, chats: Sequence[ChatPrompt], batch: Batch) -> list[Tensor]:
    """Per chat, log-probabilities [response token, vocab] of the next token at each position that
    predicts one of its response tokens (teacher forcing on `chat.response_ids`)."""
    out = []
    for b, c in enumerate(chats):
        start = int(batch.offset[b]) + c.n_prompt - 1
        out.append(torch.log_softmax(logits[b, start : start + len(c.response_ids)].float(), dim=-1))
    return out


def refusal_score(
    logprobs: Float[Tensor, "prompt vocab"], refusal_tokens: Sequence[int]
) -> Float[Tensor, " prompt"]:
    """Arditi's refusal score: log p(R) − log(1 − p(R)), R the refusal-start tokens."""
    log_p = torch.logsumexp(logprobs[:, list(refusal_tokens)].double(), dim=-1)
    log_not = torch.log1p(-log_p.exp().clamp(max=1 - 1e-12))
    return (log_p - log_not).float()


def kl_divergence(
    base: Float[Tensor, "prompt vocab"], other: Float[Tensor, "prompt vocab"]
) -> Float[Tensor, " prompt"]:
    """KL(base ‖ other) per prompt, from log-probabilities."""
    return (base.exp() * (base - other)).sum(-1)


@dataclass(frozen=True)
class ForcedResiduals:
    """Residuals at one slot of teacher-forced prompt + response: t_inst and t_post, and every
    response token (`response[i]` is `[n_tokens_i, d_model]`), float32 on CPU."""

    slot: int
    prompt: Float[Tensor, "prompt npos d_model"]  # positions (t_inst, t_post)
    response: tuple[Tensor, ...]


def teacher_forced_residuals(
    model: HarcModel,
    chats: Sequence[ChatPrompt],
    slot: int,
    *,
    hooks: Sequence[tuple[str, HookFn]] = (),
    batch_size: int = 16,
) -> ForcedResiduals:
    """Residuals at one `slot` of teacher-forced chats (after `hooks`, an intervention or an attack):
    t_inst and t_post, and every response token. `chats` carry their responses as `response_ids`."""
    prompt, response = _forced_residuals(model, chats, (slot,), hooks, batch_size)
    return ForcedResiduals(slot, prompt[:, 0], tuple(r[:, 0] for r in response))


def prompt_residuals(
    model: HarcModel,
    chats: Sequence[ChatPrompt],
    slots: Sequence[int],
    *,
    position: str = "t_inst",
    hooks: Sequence[tuple[str, HookFn]] = (),
    batch_size: int = 16,
) -> Float[Tensor, "prompt slot d_model"]:
    """Residuals at `slots` of each chat's `position` (t_inst or t_post), after `hooks`."""
    if position not in ("t_inst", "t_post"):
        raise HarcError(f"prompt_residuals reads t_inst or t_post, not {position!r}")
    prompt, _ = _forced_residuals(model, chats, tuple(slots), hooks, batch_size)
    return prompt[:, :, 0 if position == "t_inst" else 1]


def response_residuals(
    model: HarcModel,
    chats: Sequence[ChatPrompt],
    slots: Sequence[int],
    *,
    hooks: Sequence[tuple[str, HookFn]] = (),
    batch_size: int = 16,
) -> Float[Tensor, "token layer d_model"]:
    """Residuals at `slots` of every response token of teacher-forced chats (after `hooks`), the chats'
    tokens one after another."""
    _, response = _forced_residuals(model, chats, tuple(slots), hooks, batch_size)
    return torch.cat(response)


def response_means(
    model: HarcModel,
    chats: Sequence[ChatPrompt],
    slots: Sequence[int],
    n_response: int,
    *,
    batch_size: int = 16,
) -> Float[Tensor, "prompt slot d_model"]:
    """The mean residual at `slots` over the first `n_response` response tokens of each teacher-forced
    chat (what the response directions pool), float32 on CPU."""
    _, response = _forced_residuals(model, chats, tuple(slots), (), batch_size)
    if any(len(r) == 0 for r in response):
        raise HarcError("a chat without response tokens has no response mean")
    return torch.stack([r[:n_response].mean(0) for r in response])


def _forced_residuals(model: HarcModel, chats, slots: tuple[int, ...], hooks, batch_size: int):
    """One left-padded forward per batch (sorted by length) with a capture hook at each slot after
    `hooks`; the pass stops after the deepest slot. Returns the prompt side [prompt, slot, (t_inst,
    t_post), d_model] and, per chat, its response tokens [token, slot, d_model], float32 on CPU."""
    if not chats:
        raise HarcError("no prompts to read")
    pad = pad_token_id(model.tokenizer)
    deepest = max(slots)
    prompt_side = torch.empty(len(chats), len(slots), 2, model.d_model)
    response = [torch.empty(len(c.response_ids), len(slots), model.d_model) for c in chats]
    order = sorted(range(len(chats)), key=lambda i: -len(chats[i].all_ids))
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        batch = left_pad([chats[i] for i in chunk], pad, with_response=True)

        def capture(resid: Tensor, site, chunk=chunk, batch=batch, j: int = 0) -> None:
            for b, i in enumerate(chunk):
                off, c = int(batch.offset[b]), chats[i]
                prompt_side[i, j, 0] = resid[b, off + c.t_inst].float().cpu()
                prompt_side[i, j, 1] = resid[b, off + c.t_post].float().cpu()
                response[i][:, j] = resid[b, off + c.n_prompt : off + len(c.all_ids)].float().cpu()
            if slots[j] == deepest:
                raise StopForward

        captures = [(resid_hook_name(s, model.n_layers), partial(capture, j=j)) for j, s in enumerate(slots)]
        forward_batch(model, batch, [*hooks, *captures])
    if not torch.isfinite(prompt_side).all() or not all(torch.isfinite(r).all() for r in response):
        raise HarcError("non-finite residuals (NaN/inf): try float32 instead of a half dtype")
    return prompt_side, response
