"""Stage 4, evaluation: safety (attack success per class, white-box suppression, over-refusal,
KL) for any Variant, and verification that an intervention's change is confined to the plane."""

from .safety import EvalConfig, evaluate_safety, response_kl
from .verify import VerifyConfig, confinement_report, random_plane_fractions

__all__ = [
    "EvalConfig",
    "VerifyConfig",
    "confinement_report",
    "evaluate_safety",
    "random_plane_fractions",
    "response_kl",
]
