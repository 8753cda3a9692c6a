"""harc_interp: harmfulness and refusal directions, jailbreak geometry and the HARC coupling."""

from .activations import Activations, CacheConfig, cache_residuals
from .chat import ChatFormatter, ChatPrompt, formatter_for
from .directions import Directions
from .errors import HarcError
from .generate import Generation, generate
from .model import DEFAULT_MODEL, OFFLINE_MODELS, HarcModel, load_model, resid_hook_name
from .prompts import (
    AttackTemplate,
    Prompt,
    PromptSet,
    expand_attacks,
    load_prompts,
    starter_prompts,
)

__all__ = [
    "DEFAULT_MODEL",
    "OFFLINE_MODELS",
    "Activations",
    "AttackTemplate",
    "CacheConfig",
    "ChatFormatter",
    "ChatPrompt",
    "Directions",
    "Generation",
    "HarcError",
    "HarcModel",
    "Prompt",
    "PromptSet",
    "cache_residuals",
    "expand_attacks",
    "formatter_for",
    "generate",
    "load_model",
    "load_prompts",
    "resid_hook_name",
    "starter_prompts",
]
