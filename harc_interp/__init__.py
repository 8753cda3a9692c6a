"""harc_interp: harmfulness and refusal directions, jailbreak geometry and the HARC coupling.

The package's folders are the method, imports flowing one way: `model` → `data` → `capture` →
`directions` → `plane` → `coupling` → `evaluation` → `report` → `cli`. This namespace gathers each
stage's entry point, config and result.
"""

from .capture import (
    DEFAULT_JUDGE,
    Activations,
    CacheConfig,
    Generation,
    Judge,
    PhraseJudge,
    cache_residuals,
    generate,
)
from .coupling import (
    CouplingIntervention,
    InterventionInfo,
    LoraConfig,
    SubspaceConfig,
    TrainConfig,
    load_intervention,
    train_lora,
    train_subspace,
)
from .data import (
    AttackTemplate,
    ChatFormatter,
    ChatPrompt,
    Prompt,
    PromptSet,
    SplitConfig,
    expand_attacks,
    formatter_for,
    load_prompts,
    safety_splits,
    starter_prompts,
)
from .directions import (
    Directions,
    DirectionsConfig,
    LinearProbes,
    Selection,
    extract_directions,
    score_prompts,
)
from .errors import HarcError
from .evaluation import EvalConfig, VerifyConfig, confinement_report, evaluate_safety
from .model import (
    DEFAULT_MODEL,
    OFFLINE_MODELS,
    HarcModel,
    Variant,
    ablation_hooks,
    addition_hooks,
    load_model,
    resid_hook_name,
)
from .plane import (
    PlaneConfig,
    PlaneResult,
    TrajectoryConfig,
    TrajectoryResult,
    run_plane,
    run_trajectories,
    study_prompts,
)
from .report import run_main

__all__ = [
    "DEFAULT_JUDGE",
    "DEFAULT_MODEL",
    "OFFLINE_MODELS",
    "Activations",
    "AttackTemplate",
    "CacheConfig",
    "ChatFormatter",
    "ChatPrompt",
    "CouplingIntervention",
    "Directions",
    "DirectionsConfig",
    "EvalConfig",
    "Generation",
    "HarcError",
    "HarcModel",
    "InterventionInfo",
    "Judge",
    "LinearProbes",
    "LoraConfig",
    "PhraseJudge",
    "PlaneConfig",
    "PlaneResult",
    "Prompt",
    "PromptSet",
    "Selection",
    "SplitConfig",
    "SubspaceConfig",
    "TrainConfig",
    "TrajectoryConfig",
    "TrajectoryResult",
    "Variant",
    "VerifyConfig",
    "ablation_hooks",
    "addition_hooks",
    "cache_residuals",
    "confinement_report",
    "evaluate_safety",
    "expand_attacks",
    "extract_directions",
    "formatter_for",
    "generate",
    "load_intervention",
    "load_model",
    "load_prompts",
    "resid_hook_name",
    "run_main",
    "run_plane",
    "run_trajectories",
    "safety_splits",
    "score_prompts",
    "starter_prompts",
    "study_prompts",
    "train_lora",
    "train_subspace",
]
