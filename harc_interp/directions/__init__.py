"""Stage 1, the directions: difference-in-means directions per layer and position (float64), the
Directions artifact, probes, layer selection, causal checks, and the stage that runs them."""

from .artifact import (
    DIRECTION_NAMES,
    Directions,
    Selection,
    add_response_directions,
    directions_from_activations,
)
from .causal import causal_validation
from .means import cosine_per_layer, diff_in_means, unit_and_norm
from .probes import LinearProbes, bootstrap_cosine, fit_probe, probe_metrics, projection_metrics
from .score import score_prompts
from .selection import Candidate, arditi_select, harc_layer_scores, relaxed_pick, top_layers
from .stage import DirectionsConfig, extract_directions, split_three

__all__ = [
    "DIRECTION_NAMES",
    "Candidate",
    "Directions",
    "DirectionsConfig",
    "LinearProbes",
    "Selection",
    "add_response_directions",
    "arditi_select",
    "bootstrap_cosine",
    "causal_validation",
    "cosine_per_layer",
    "diff_in_means",
    "directions_from_activations",
    "extract_directions",
    "fit_probe",
    "harc_layer_scores",
    "probe_metrics",
    "projection_metrics",
    "relaxed_pick",
    "score_prompts",
    "split_three",
    "top_layers",
    "unit_and_norm",
]
