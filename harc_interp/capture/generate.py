"""Batched chat generation with the KV cache, left padding, and hooks active while decoding.

Runs Hugging Face `generate` on the raw model (the fastest path on every device); interventions
are `fn(resid, site)` hooks at TransformerLens residual names, applied to the prompt pass and to
every decoding step. Greedy by default.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..artifacts import cached_json
from ..data.chat import ChatPrompt, formatter_for, left_pad, pad_token_id
from ..data.prompts import PromptSet
from ..errors import HarcError
from ..model.hooked import HarcModel, HookFn
from .forward import SharedPrefix, shared_prefix, split_prefix
from .judges import Judge


@dataclass(frozen=True)
class Generation:
    prompt_id: str
    instruction: str
    response: str
    response_ids: tuple[int, ...]
    finished: bool  # stopped at an end-of-turn token rather than the token limit


def stop_ids(model: HarcModel) -> list[int]:
    """End-of-turn tokens: the generation config's eos ids plus the tokenizer's eos."""
    eos = model.hf.generation_config.eos_token_id
    ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    if model.tokenizer.eos_token_id is not None:
        ids.add(model.tokenizer.eos_token_id)
    return sorted(ids)


def generate_ids(
    model: HarcModel,
    chats: Sequence[ChatPrompt],
    *,
    max_new_tokens: int = 64,
    hooks: Sequence[tuple[str, HookFn]] = (),
    do_sample: bool = False,
    seed: int | None = None,
    prefix: SharedPrefix | None = None,
) -> list[tuple[list[int], bool]]:
    """Generate for one left-padded batch; returns (new token ids up to end-of-turn, finished).

    A chat's `response_ids` are a prefill: generation continues after them, and they are not
    part of the returned ids. With `prefix` (computed under the same hooks) the chats hold the tokens
    after it: each row is the prefix, its pads, then its own tokens; the position ids HF derives from
    the attention mask continue right after the prefix, as if the prompt were unpadded."""
    batch = left_pad(chats, pad_token_id(model.tokenizer), with_response=True)
    input_ids, mask, cache = batch.input_ids, batch.attention_mask, None
    if prefix is not None:
        cache, mask = prefix.for_batch(mask)
        input_ids = torch.cat([torch.tensor([prefix.ids]).expand(len(chats), -1), input_ids], 1)
    stops = stop_ids(model)
    kwargs = dict(
        do_sample=do_sample,
        max_new_tokens=max_new_tokens,
        eos_token_id=stops,
        pad_token_id=pad_token_id(model.tokenizer),
    )
    if not do_sample:  # greedy: clear sampling defaults from the model's generation config
        kwargs |= dict(temperature=None, top_p=None, top_k=None)
    # HF samples from the global RNG: seed a forked copy so the caller's RNG state is untouched.
    devices = [model.device] if model.device.type == "cuda" else []
    span = model.span(batch.span_role.to(model.device))
    with torch.no_grad(), model.hooks(hooks), span, torch.random.fork_rng(devices=devices):
        torch.manual_seed(0 if seed is None else seed)
        out = model.hf.generate(
            input_ids=input_ids.to(model.device),
            attention_mask=mask.to(model.device),
            past_key_values=cache,
            **kwargs,
        )
    new = out[:, input_ids.shape[1] :].cpu().tolist()
    results = []
    for row in new:
        cut = next((i for i, t in enumerate(row) if t in stops), None)
        results.append((row if cut is None else row[:cut], cut is not None))
    return results


def generate_chats(
    model: HarcModel,
    chats: Sequence[ChatPrompt],
    *,
    max_new_tokens: int = 64,
    batch_size: int = 8,
    hooks: Sequence[tuple[str, HookFn]] = (),
    do_sample: bool = False,
    seed: int | None = None,
    progress: bool = True,
    share_prefix: bool = True,
) -> list[tuple[list[int], bool]]:
    """Generate for formatted chats in batches sorted by length (`length_batches`); results in the
    input order.

    The token prefix every chat shares (the template's system turn and user header) runs once under
    `hooks` and its key/value cache serves every batch (`share_prefix=False`: each prompt whole)."""
    if max_new_tokens < 1 or batch_size < 1:
        raise HarcError("max_new_tokens and batch_size must be positive")
    prefix_ids, rest = split_prefix(model, chats, share_prefix, new_tokens=max_new_tokens)
    prefix = shared_prefix(model, prefix_ids, hooks)
    results: list[tuple[list[int], bool] | None] = [None] * len(chats)
    lengths = [len(c.all_ids) + max_new_tokens for c in rest]
    with tqdm(total=len(chats), desc="generating", unit="prompt", disable=not progress) as bar:
        for start, chunk in length_batches(lengths, batch_size):
            outs = generate_ids(
                model,
                [rest[i] for i in chunk],
                max_new_tokens=max_new_tokens,
                hooks=hooks,
                do_sample=do_sample,
                seed=None if seed is None else seed + start,
                prefix=prefix,
            )
            for i, out in zip(chunk, outs, strict=True):
                results[i] = out
            bar.update(len(chunk))
    return results  # type: ignore[return-value]


def length_batches(lengths: Sequence[int], batch_size: int) -> list[tuple[int, list[int]]]:
    """Indices in batches, longest first, each at most `batch_size` rows and, padded to its longest,
    at most 1.5× the tokens of `batch_size` rows of the median length: a few long prompts get small
    batches instead of padding a full one (on the dev prompts one 366-token request padded 63 others,
    and batches of 128 or 256 generated 1.5 and 2.7 times slower than 64). Each batch comes with its
    start in the sorted order (what seeds a sampled batch)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    budget = 1.5 * batch_size * sorted(lengths)[len(lengths) // 2] if lengths else 0
    batches, start = [], 0
    while start < len(order):
        longest, end = lengths[order[start]], start + 1
        while end < len(order) and end - start < batch_size and (end - start + 1) * longest <= budget:
            end += 1
        batches.append((start, order[start:end]))
        start = end
    return batches


def generate_texts(
    model: HarcModel,
    chats: Sequence[ChatPrompt],
    *,
    max_new_tokens: int = 64,
    batch_size: int = 8,
    hooks: Sequence[tuple[str, HookFn]] = (),
    do_sample: bool = False,
    seed: int | None = None,
    progress: bool = True,
) -> list[str]:
    """The decoded responses (special tokens skipped) of `generate_chats`, in the input order."""
    outs = generate_chats(
        model,
        chats,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        hooks=hooks,
        do_sample=do_sample,
        seed=seed,
        progress=progress,
    )
    return [model.tokenizer.decode(ids, skip_special_tokens=True) for ids, _ in outs]


def generate(
    model: HarcModel,
    prompts: PromptSet | Sequence[str],
    *,
    max_new_tokens: int = 64,
    batch_size: int = 8,
    hooks: Sequence[tuple[str, HookFn]] = (),
    system_prompt: str | None = None,
    prefill: str | None = None,
    do_sample: bool = False,
    seed: int | None = None,
    progress: bool = True,
) -> list[Generation]:
    """Generate chat responses for a prompt set, batched by length, in the input order.

    `prefill` starts every response with the given text (e.g. "Sure, here is"): the returned
    response includes it."""
    ps = prompts if isinstance(prompts, PromptSet) else None
    texts = ps.texts if ps is not None else list(prompts)
    ids = ps.ids if ps is not None else [f"prompt-{i}" for i in range(len(texts))]
    fmt = formatter_for(model, system_prompt)
    chats = fmt.format_many(texts, None if prefill is None else [prefill] * len(texts), ids=ids)
    outs = generate_chats(
        model,
        chats,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        hooks=hooks,
        do_sample=do_sample,
        seed=seed,
        progress=progress,
    )
    results = []
    for i, (new, finished) in enumerate(outs):
        full = list(chats[i].response_ids) + new
        text = model.tokenizer.decode(full, skip_special_tokens=True)
        results.append(Generation(ids[i], texts[i], text, tuple(full), finished))
    return results


def judged_generations(
    model: HarcModel,
    ps: PromptSet,
    path: str | Path,
    judge: Judge,
    *,
    max_new_tokens: int,
    batch_size: int = 8,
    system_prompt: str | None = None,
    prefill: str | None = None,
    progress: bool = True,
) -> list[dict]:
    """The model's own responses to `ps`, judged, as rows {id, prompt, response_ids, response, refusal}
    cached at `path` (a run folder: responses to harmful prompts never go to logs). A rerun reads the
    file; one written for other prompts is refused rather than overwritten."""

    def compute() -> list[dict]:
        gens = generate(
            model,
            ps,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            system_prompt=system_prompt,
            prefill=prefill,
            progress=progress,
        )
        return [
            {
                "id": g.prompt_id,
                "prompt": g.instruction,
                "response_ids": list(g.response_ids),
                "response": g.response,
                "refusal": judge(g.response),
            }
            for g in gens
        ]

    rows = cached_json(path, compute)
    if [r["id"] for r in rows] != ps.ids:
        raise HarcError(f"{path} belongs to other prompts; delete it or use a new output folder")
    return rows
