"""Stage 4, evaluation: safety (attack success per class, white-box suppression, over-refusal,
KL) for any Variant, the comparison of HARC with the baselines, re-judging saved responses and judge agreement, and verification that an intervention's change is confined to the plane."""

from .compare import PRESETS, CompareConfig, ComparePreset, compare_methods, comparison_markdown
from .judging import agreement, make_judge, rejudge
from .safety import EvalConfig, evaluate_safety, response_kl
from .verify import VerifyConfig, confinement_report, random_plane_fractions

__all__ = [
    "PRESETS",
    "CompareConfig",
    "ComparePreset",
    "EvalConfig",
    "VerifyConfig",
    "agreement",
    "compare_methods",
    "comparison_markdown",
    "confinement_report",
    "evaluate_safety",
    "make_judge",
    "random_plane_fractions",
    "rejudge",
    "response_kl",
]
