"""The data layer: prompt sets (loaders, splits, attack templates, the built-in starter sets) and
chat formatting (the tokenizer's own template → token ids and named positions)."""

from .chat import Batch, ChatFormatter, ChatPrompt, formatter_for, left_pad, pad_token_id
from .prompts import (
    AttackTemplate,
    Prompt,
    PromptSet,
    SplitConfig,
    as_role,
    expand_attacks,
    load_prompts,
    safety_splits,
    starter_prompts,
)

__all__ = [
    "AttackTemplate",
    "Batch",
    "ChatFormatter",
    "ChatPrompt",
    "Prompt",
    "PromptSet",
    "as_role",
    "expand_attacks",
    "formatter_for",
    "left_pad",
    "load_prompts",
    "pad_token_id",
    "SplitConfig",
    "safety_splits",
    "starter_prompts",
]
