"""The capture layer: what is read off a model. One forward pass under a declared span with early
stop, the residual cache, batched generation with hooks, teacher-forced read-outs, and judges."""

from .activations import Activations, CacheConfig, cache_residuals, residuals_for_batch
from .forward import (
    ForcedResiduals,
    StopForward,
    forward_batch,
    kl_divergence,
    prompt_residuals,
    refusal_score,
    response_logprobs,
    response_means,
    response_residuals,
    teacher_forced_residuals,
)
from .generate import Generation, generate, generate_chats, generate_texts, judged_generations
from .judges import (
    DEFAULT_JUDGE,
    REFUSAL_PHRASES,
    Judge,
    PhraseJudge,
    Verdict,
    find_refusal_tokens,
    refusal_rate,
)
from .model_judge import ModelJudge
from .responding import Answer, majority, pooled_rate, refusal_rates, respond, sent_chats
from .sweep import PromptSweep, last_token_logprobs

__all__ = [
    "Answer",
    "majority",
    "prompt_residuals",
    "pooled_rate",
    "refusal_rates",
    "respond",
    "sent_chats",
    "DEFAULT_JUDGE",
    "REFUSAL_PHRASES",
    "Activations",
    "CacheConfig",
    "ForcedResiduals",
    "Generation",
    "Judge",
    "ModelJudge",
    "PhraseJudge",
    "StopForward",
    "Verdict",
    "cache_residuals",
    "find_refusal_tokens",
    "forward_batch",
    "generate",
    "generate_chats",
    "generate_texts",
    "judged_generations",
    "kl_divergence",
    "last_token_logprobs",
    "PromptSweep",
    "refusal_rate",
    "refusal_score",
    "residuals_for_batch",
    "response_logprobs",
    "response_means",
    "response_residuals",
    "teacher_forced_residuals",
]
