"""Safety baselines beside HARC, each a `Variant` judged by the same evaluation: the inference-time
defences (ActAdd, CAST, Self-Reminder, SmoothLLM) with their validation-row calibration, and the
training-time ones (safety SFT, DPO, Circuit Breakers, RepBend) as LoRA adapters."""

from .inference import (
    SelfReminder,
    SmoothLLM,
    SteeringCalibration,
    actadd_variant,
    calibrate_coefficient,
    calibrate_condition,
    cast_hooks,
    cast_variant,
    perturb,
)
from .training import (
    TRAINING_METHODS,
    BaselineData,
    TrainingBaselineConfig,
    baseline_variant,
    build_baseline_data,
    target_slots,
    train_baseline,
)

__all__ = [
    "TRAINING_METHODS",
    "BaselineData",
    "SelfReminder",
    "SmoothLLM",
    "SteeringCalibration",
    "TrainingBaselineConfig",
    "actadd_variant",
    "baseline_variant",
    "build_baseline_data",
    "calibrate_coefficient",
    "calibrate_condition",
    "cast_hooks",
    "cast_variant",
    "perturb",
    "target_slots",
    "train_baseline",
]
