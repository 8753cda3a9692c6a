"""The attacks layer: adaptive attacks on the model under test with a defence active (any `Variant`: an
intervention's hooks and context, an input-side defence). GCG searches an adversarial suffix by gradients
through the variant's hooks; PAIR refines prompts with an attacker model and a judge; PAP rewrites goals
with an attacker model. Every attempt is written to the run folder (`runs.py`), which a rerun resumes."""

from .gcg import GCG, GCGConfig, allowed_tokens, sample_candidates
from .pair import Pair, PairConfig, attacker_request, parse_proposal
from .pap import pap_rewrites, prompt_rows
from .runs import AttemptLog, GoalRun, attack_score, attack_summary, goal_seed, run_goals, succeeded, verdicts

__all__ = [
    "GCG",
    "AttemptLog",
    "GCGConfig",
    "GoalRun",
    "Pair",
    "PairConfig",
    "allowed_tokens",
    "attack_score",
    "attack_summary",
    "attacker_request",
    "goal_seed",
    "pap_rewrites",
    "parse_proposal",
    "prompt_rows",
    "run_goals",
    "sample_candidates",
    "succeeded",
    "verdicts",
]
