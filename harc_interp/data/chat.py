"""Chat formatting and named token positions, from the tokenizer's own chat template.

For `[template prefix][instruction][template suffix]` (the prefix holds any system prompt,
including one the template inserts by default) we locate the instruction by character offsets and
map it to tokens:

- t_inst: the token holding the instruction's last character (harmfulness is read here);
- post-instruction tokens: every token after t_inst (the template suffix);
- t_post: the last prompt token (refusal is read here);
- response tokens: appended after the prompt, tokenized on their own, as generation produces them.

Nothing here is specific to a model family. Prompts are tokenized exactly as
`tokenizer.apply_chat_template(..., tokenize=True)` does (no extra BOS).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from ..errors import HarcError

_SENTINEL = "HARCPLACEHOLDERINSTRUCTION"


@dataclass(frozen=True)
class ChatPrompt:
    """One chat-formatted prompt with its named positions (indices into the unpadded ids)."""

    instruction: str
    text: str
    input_ids: tuple[int, ...]
    inst_span: tuple[int, int]  # character span of the instruction in `text`
    t_inst: int
    response_ids: tuple[int, ...] = ()

    @property
    def n_prompt(self) -> int:
        """Number of prompt tokens (template included)."""
        return len(self.input_ids)

    @property
    def t_post(self) -> int:
        """Index of the last prompt token, where the answer starts."""
        return self.n_prompt - 1

    @property
    def post_instruction(self) -> tuple[int, ...]:
        """Indices of the template suffix after t_inst (t_post is the last)."""
        return tuple(range(self.t_inst + 1, self.n_prompt))

    @property
    def response_positions(self) -> tuple[int, ...]:
        """Indices of the response tokens, if any."""
        return tuple(range(self.n_prompt, self.n_prompt + len(self.response_ids)))

    @property
    def all_ids(self) -> tuple[int, ...]:
        """Prompt then response token ids."""
        return self.input_ids + self.response_ids


@dataclass
class ChatFormatter:
    """Formats instructions with a tokenizer's chat template and finds named positions."""

    tokenizer: object
    system_prompt: str | None = None
    max_length: int | None = None
    _prefix: str = field(init=False, repr=False)
    _suffix: str = field(init=False, repr=False)

    def __post_init__(self):
        tok = self.tokenizer
        if not getattr(tok, "chat_template", None):
            raise HarcError(
                f"tokenizer {type(tok).__name__} has no chat template: use an instruction-tuned "
                "(chat) model, or set tokenizer.chat_template to the model's template"
            )
        if not getattr(tok, "is_fast", False):
            raise HarcError("positions need character offsets: load a fast tokenizer (use_fast=True)")
        rendered = self.render(_SENTINEL)
        if rendered.count(_SENTINEL) != 1:
            raise HarcError("the chat template does not render the user message exactly once")
        start = rendered.index(_SENTINEL)
        self._prefix, self._suffix = rendered[:start], rendered[start + len(_SENTINEL) :]
        if not self._suffix:
            raise HarcError(
                "the chat template renders nothing after the instruction: no post-instruction tokens"
            )

    @property
    def template_hash(self) -> str:
        """Identifies template + system prompt: artifacts record it so positions stay comparable."""
        key = f"{self.tokenizer.chat_template}\x00{self.system_prompt}"
        return hashlib.sha256(key.encode()).hexdigest()[:16]

    @property
    def suffix(self) -> str:
        """The template text after the instruction (the post-instruction text)."""
        return self._suffix

    def render(self, instruction: str) -> str:
        """The chat template's text for one user turn (with the system prompt if set), ready for the
        answer."""
        messages = [{"role": "user", "content": instruction}]
        if self.system_prompt is not None:
            messages.insert(0, {"role": "system", "content": self.system_prompt})
        try:
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception as e:  # jinja raise_exception, e.g. "System role not supported"
            raise HarcError(f"the chat template rejected the messages: {e}") from e

    def format(self, instruction: str, response: str | Sequence[int] | None = None) -> ChatPrompt:
        """A `ChatPrompt`: token ids and named positions of `instruction`, with `response` (text or ids)
        appended if given."""
        if not isinstance(instruction, str) or not instruction.strip():
            raise HarcError(f"empty instruction: {instruction!r}; every prompt needs text")
        text = self.render(instruction)
        if not (text.startswith(self._prefix) and text.endswith(self._suffix)):
            raise HarcError(
                "the chat template renders this instruction with a different prefix or suffix than "
                f"a placeholder, so positions are ambiguous: {instruction[:80]!r}"
            )
        inst_span = (len(self._prefix), len(text) - len(self._suffix))
        if inst_span[1] <= inst_span[0]:
            raise HarcError(f"the chat template dropped the instruction {instruction[:80]!r}")
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = enc["input_ids"], enc["offset_mapping"]
        last_char = inst_span[1] - 1
        t_inst = max((i for i, (s, e) in enumerate(offsets) if s <= last_char < e), default=None)
        if t_inst is None:
            raise HarcError(f"no token covers the end of the instruction {instruction[:80]!r}")
        if t_inst == len(ids) - 1:
            raise HarcError(
                "the instruction's last token is the last prompt token: no post-instruction tokens"
            )
        if response is None:
            response_ids: tuple[int, ...] = ()
        elif isinstance(response, str):
            response_ids = tuple(self.tokenizer(response, add_special_tokens=False)["input_ids"])
        else:
            response_ids = tuple(int(i) for i in response)
        limit = self.max_length
        if limit is not None and len(ids) + len(response_ids) > limit:
            raise HarcError(
                f"prompt is {len(ids) + len(response_ids)} tokens, longer than the model's context "
                f"of {limit}: shorten it ({instruction[:60]!r}...)"
            )
        return ChatPrompt(instruction, text, tuple(ids), inst_span, t_inst, response_ids)

    def format_many(
        self,
        instructions: Sequence[str],
        responses: Sequence[str | Sequence[int]] | None = None,
        ids: Sequence[str] | None = None,
    ) -> list[ChatPrompt]:
        """Every instruction formatted; an error names the row (its id, with `ids`) that caused it."""
        if responses is not None and len(responses) != len(instructions):
            raise HarcError(f"{len(instructions)} instructions but {len(responses)} responses")
        out = []
        for i, inst in enumerate(instructions):
            try:
                out.append(self.format(inst, None if responses is None else responses[i]))
            except HarcError as e:
                row = f"prompt '{ids[i]}'" if ids is not None else f"prompt {i}"
                raise HarcError(f"{row}: {e}") from None
        return out

    def too_long(self, instructions: Sequence[str], reserve: int = 0) -> list[int]:
        """Indices of the instructions whose prompt, with `reserve` tokens left for an answer, exceeds the
        context (none without a limit)."""
        if self.max_length is None:
            return []
        texts = [self.render(t) for t in instructions]
        lengths = [len(ids) for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]
        return [i for i, n in enumerate(lengths) if n + reserve > self.max_length]


def formatter_for(model, system_prompt: str | None = None) -> ChatFormatter:
    """The formatter for a loaded HarcModel, with its context length as the limit."""
    return ChatFormatter(model.tokenizer, system_prompt=system_prompt, max_length=model.context_length)


@dataclass(frozen=True)
class Batch:
    """Token ids for a batch of ChatPrompts, left-padded (one row each) or packed (`pack_batch`: one row
    holding them back to back); `offset[b]` shifts prompt b's unpadded indices into its row."""

    input_ids: torch.Tensor  # [batch, pos]; packed: [1, total]
    attention_mask: torch.Tensor  # [batch, pos]; packed: [1, total] of ones
    offset: torch.Tensor  # [prompt]
    # [batch, pos] long: -1 before t_inst, then 0, 1, 2, ... for t_inst, the template suffix and the
    # response: the positions an intervention may edit (>= 0), and which of them each one is.
    span_role: torch.Tensor
    lengths: torch.Tensor | None = None  # packed: [prompt] token counts; None: left-padded

    @property
    def packed(self) -> bool:
        """Whether the prompts share one row (`pack_batch`)."""
        return self.lengths is not None


def left_pad(prompts: Sequence[ChatPrompt], pad_id: int, with_response: bool = True) -> Batch:
    """Left-padded token ids, attention mask, offsets and span roles of a batch of prompts."""
    seqs = [p.all_ids if with_response else p.input_ids for p in prompts]
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    offset = torch.empty(len(seqs), dtype=torch.long)
    span_role = torch.full((len(seqs), width), -1, dtype=torch.long)
    for b, s in enumerate(seqs):
        offset[b] = width - len(s)
        ids[b, width - len(s) :] = torch.tensor(s, dtype=torch.long)
        mask[b, width - len(s) :] = 1
        start = int(offset[b]) + prompts[b].t_inst
        span_role[b, start:] = torch.arange(width - start)
    return Batch(ids, mask, offset, span_role)


def pack_batch(prompts: Sequence[ChatPrompt]) -> Batch:
    """The prompts (without responses) back to back in one row, no padding: what a pass whose every
    hook acts position by position can run instead of a padded batch, as long as each prompt attends
    to itself only (`capture.forward.forward_batch` builds that mask from `lengths`)."""
    seqs = [p.input_ids for p in prompts]
    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)
    offset = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)[:-1]])
    ids = torch.tensor([[t for s in seqs for t in s]], dtype=torch.long)
    roles = [torch.arange(len(s)) - p.t_inst for p, s in zip(prompts, seqs, strict=True)]
    span_role = torch.cat(roles).clamp(min=-1)[None]
    return Batch(ids, torch.ones_like(ids), offset, span_role, lengths)


def pad_token_id(tokenizer) -> int:
    """The tokenizer's pad token, else its eos token; `HarcError` when it has neither."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise HarcError("tokenizer has neither a pad nor an eos token; set tokenizer.pad_token")
    return int(pad)
