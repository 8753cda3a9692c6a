"""Batched chat generation with the KV cache, left padding, and hooks active while decoding.

Runs Hugging Face `generate` on the raw model (the fastest path on every device); interventions
are `fn(resid, site)` hooks at TransformerLens residual names, applied to the prompt pass and to
every decoding step. Greedy by default.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from .chat import ChatPrompt, formatter_for, left_pad, pad_token_id
from .errors import HarcError
from .model import HarcModel, HookFn
from .prompts import PromptSet


@dataclass(frozen=True)
class Generation:
    prompt_id: str
    instruction: str
    response: str
    response_ids: tuple[int, ...]
    finished: bool  # stopped at an end-of-turn token rather than the token limit


def _stop_ids(model: HarcModel) -> list[int]:
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
) -> list[tuple[list[int], bool]]:
    """Generate for one left-padded batch; returns (new token ids up to end-of-turn, finished)."""
    batch = left_pad(chats, pad_token_id(model.tokenizer), with_response=False)
    stops = _stop_ids(model)
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
    with torch.no_grad(), model.hooks(hooks), torch.random.fork_rng(devices=devices):
        torch.manual_seed(0 if seed is None else seed)
        out = model.hf.generate(
            input_ids=batch.input_ids.to(model.device),
            attention_mask=batch.attention_mask.to(model.device),
            **kwargs,
        )
    new = out[:, batch.input_ids.shape[1] :].cpu().tolist()
    results = []
    for row in new:
        cut = next((i for i, t in enumerate(row) if t in stops), None)
        results.append((row if cut is None else row[:cut], cut is not None))
    return results


def generate(
    model: HarcModel,
    prompts: PromptSet | Sequence[str],
    *,
    max_new_tokens: int = 64,
    batch_size: int = 8,
    hooks: Sequence[tuple[str, HookFn]] = (),
    system_prompt: str | None = None,
    do_sample: bool = False,
    seed: int | None = None,
    progress: bool = True,
) -> list[Generation]:
    """Generate chat responses for a prompt set, batched by length, in the input order."""
    if max_new_tokens < 1 or batch_size < 1:
        raise HarcError("max_new_tokens and batch_size must be positive")
    ps = prompts if isinstance(prompts, PromptSet) else None
    texts = ps.texts if ps is not None else list(prompts)
    ids = ps.ids if ps is not None else [f"prompt-{i}" for i in range(len(texts))]
    chats = formatter_for(model, system_prompt).format_many(texts)
    order = sorted(range(len(chats)), key=lambda i: -chats[i].n_prompt)
    results: list[Generation | None] = [None] * len(chats)
    with tqdm(total=len(chats), desc="generating", unit="prompt", disable=not progress) as bar:
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            outs = generate_ids(
                model,
                [chats[i] for i in chunk],
                max_new_tokens=max_new_tokens,
                hooks=hooks,
                do_sample=do_sample,
                seed=None if seed is None else seed + start,
            )
            for i, (new, finished) in zip(chunk, outs, strict=True):
                text = model.tokenizer.decode(new, skip_special_tokens=True)
                results[i] = Generation(ids[i], texts[i], text, tuple(new), finished)
            bar.update(len(chunk))
    return results  # type: ignore[return-value]
