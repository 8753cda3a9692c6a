"""Safety baselines beside HARC, each a `Variant` judged by the same evaluation: the inference-time
defences (ActAdd, CAST, Self-Reminder, SmoothLLM) with their validation-row calibration."""

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

__all__ = [
    "SelfReminder",
    "SmoothLLM",
    "SteeringCalibration",
    "actadd_variant",
    "calibrate_coefficient",
    "calibrate_condition",
    "cast_hooks",
    "cast_variant",
    "perturb",
]
