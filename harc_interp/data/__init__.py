"""The data layer: prompt sets (loaders, splits, attack templates, the built-in starter sets, the paper's
attack classes) and chat formatting (the tokenizer's own template → token ids and named positions)."""

from .attack_classes import (
    ATTACK_SOURCES,
    PERSUASION_TECHNIQUES,
    code_attack_templates,
    deep_inception_templates,
    pap_rewrite_request,
    pap_templates,
    paper_attack_templates,
    write_attack_file,
)
from .chat import Batch, ChatFormatter, ChatPrompt, formatter_for, left_pad, pad_token_id
from .prompts import (
    GOAL_ENCODINGS,
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
    "ATTACK_SOURCES",
    "GOAL_ENCODINGS",
    "PERSUASION_TECHNIQUES",
    "AttackTemplate",
    "code_attack_templates",
    "deep_inception_templates",
    "pap_rewrite_request",
    "pap_templates",
    "paper_attack_templates",
    "write_attack_file",
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
