"""Answers of a `Variant` to a list of requests: its hooks and context, and its input-side defence
(a replaced system prompt, a rewritten user turn, or an ensemble of copies the judge votes on).

Every evaluation that generates goes through `respond`, so a defence that changes the prompt is judged
exactly like one that changes the activations."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..data.chat import ChatPrompt, formatter_for
from ..data.prompts import PromptSet
from ..errors import HarcError
from ..model.edits import Variant
from ..model.hooked import HarcModel, HookFn
from .generate import generate_chats
from .judges import DEFAULT_JUDGE, Judge


@dataclass(frozen=True)
class Answer:
    """One request's answer: the text returned, the judge's refusal call, the tokens generated for it
    (all copies of an ensemble), whether the returned answer ended at an end-of-turn token, and the
    share of copies refused (1 copy: 0 or 1)."""

    text: str
    refused: bool
    n_tokens: int
    finished: bool
    refused_share: float


def sent_chats(
    model: HarcModel,
    variant: Variant,
    instructions: Sequence[str],
    ids: Sequence[str],
    system_prompt: str | None = None,
    responses: Sequence[Sequence[int]] | None = None,
) -> list[ChatPrompt]:
    """What `variant` sends the model for each request, formatted (an ensemble's first copy), with
    `responses` appended when given: the prompts its next-token distributions are read from."""
    defence = variant.prompts
    if defence is not None and defence.system_prompt is not None:
        system_prompt = defence.system_prompt
    sent = [defence.copies(t, k)[0] if defence else t for t, k in zip(instructions, ids, strict=True)]
    return formatter_for(model, system_prompt).format_many(sent, responses, ids=list(ids))


def respond(
    model: HarcModel,
    variant: Variant,
    instructions: Sequence[str],
    ids: Sequence[str],
    *,
    judge: Judge = DEFAULT_JUDGE,
    system_prompt: str | None = None,
    max_new_tokens: int = 64,
    batch_size: int = 16,
    extra_hooks: Sequence[tuple[str, HookFn]] = (),
    do_sample: bool = False,
    seed: int | None = None,
    progress: bool = False,
) -> list[Answer]:
    """Generate under `variant` (its context entered, its hooks then `extra_hooks` active) and judge.

    With an input-side defence the model is sent its copies of each request under its system prompt;
    an ensemble's answer is refused unless more than half of the copies are answered (SmoothLLM's vote,
    ties refused), and the text returned is the first copy that agrees with the vote."""
    if len(ids) != len(instructions):
        raise HarcError(f"{len(instructions)} requests but {len(ids)} ids")
    defence = variant.prompts
    if defence is not None and defence.system_prompt is not None:
        system_prompt = defence.system_prompt
    fmt = formatter_for(model, system_prompt)
    copies = [defence.copies(t, k) if defence else [t] for t, k in zip(instructions, ids, strict=True)]
    if any(not c for c in copies):
        raise HarcError(f"the input defence '{defence.name}' sent no copy of a request")
    flat = [c for cs in copies for c in cs]
    flat_ids = [f"{k}#{j}" for k, cs in zip(ids, copies, strict=True) for j in range(len(cs))]
    with variant.context():
        outs = generate_chats(
            model,
            fmt.format_many(flat, ids=flat_ids),
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            hooks=[*variant.hooks, *extra_hooks],
            do_sample=do_sample,
            seed=seed,
            progress=progress,
        )
    texts = [model.tokenizer.decode(ids_, skip_special_tokens=True) for ids_, _ in outs]
    flags = [judge(t) for t in texts]
    answers, at = [], 0
    for cs in copies:
        span = range(at, at + len(cs))
        at += len(cs)
        refused, k = majority([flags[i] for i in span])
        pick = span[k]
        share = sum(flags[i] for i in span) / len(cs)
        n_tokens = sum(len(outs[i][0]) for i in span)
        answers.append(Answer(texts[pick], refused, n_tokens, outs[pick][1], share))
    return answers


def majority(refusals: Sequence[bool]) -> tuple[bool, int]:
    """SmoothLLM's vote over an ensemble's refusal calls: refused unless more than half of the copies are
    answered (a tie is refused), and the index of the first copy that agrees with the vote."""
    if not refusals:
        raise HarcError("no answers to vote on")
    refused = 2 * sum(refusals) >= len(refusals)
    return refused, next(i for i, r in enumerate(refusals) if r == refused)


def refusal_rates(
    model: HarcModel,
    variant: Variant,
    rows: dict[str, PromptSet],
    *,
    judge: Judge = DEFAULT_JUDGE,
    system_prompt: str | None = None,
    max_new_tokens: int = 24,
    batch_size: int = 16,
) -> dict[str, float]:
    """{group: judged refusal rate} of each group's prompts answered greedily under `variant`: the
    validation check behind every calibration (the coupling's margin, the steering coefficients)."""
    rates = {}
    for g, ps in rows.items():
        answers = respond(
            model,
            variant,
            ps.texts,
            ps.ids,
            judge=judge,
            system_prompt=system_prompt,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
        )
        rates[g] = sum(a.refused for a in answers) / len(answers)
    return rates


def pooled_rate(rates: dict[str, float], rows: dict[str, PromptSet], groups: Sequence[str]) -> float:
    """The rate over the prompts of `groups` together (each group's rate weighted by its size)."""
    present = [g for g in groups if g in rows]
    return sum(rates[g] * len(rows[g]) for g in present) / sum(len(rows[g]) for g in present)
