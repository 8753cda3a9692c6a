"""The model layer: offline packaging, the hooked model (TransformerLens hook names on HF modules)
and the residual edits every later stage builds on."""

from .edits import PromptDefence, Variant, ablation_hooks, addition_hooks, project_out
from .hooked import HarcModel, HookFn, HookSite, Span, load_model, resid_hook_name
from .offline import DEFAULT_MODEL, OFFLINE_MODELS, OfflineModel, cache_root

__all__ = [
    "DEFAULT_MODEL",
    "OFFLINE_MODELS",
    "HarcModel",
    "HookFn",
    "HookSite",
    "OfflineModel",
    "PromptDefence",
    "Span",
    "Variant",
    "ablation_hooks",
    "addition_hooks",
    "cache_root",
    "load_model",
    "project_out",
    "resid_hook_name",
]
