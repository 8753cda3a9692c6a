"""Stage 3, the coupling: plane maps confined to the harmfulness–refusal plane, their training data
(plane coordinates under every condition), the objective, training (subspace mode), the paper's LoRA
mode, and the loader of any trained intervention."""

from .datasets import conditions, plane_coordinates_dataset, plane_separability, response_coordinates_dataset
from .load import InterventionInfo, load_intervention
from .loop import TrainConfig, train_loop
from .lora import (
    LoraConfig,
    LoraObjective,
    activation_checkpointing,
    lora_adapter,
    lora_targets,
    train_lora,
)
from .maps import CouplingIntervention, PlaneMap
from .objective import Margins, SlotObjective, fit_slot_objective, oblique_coordinates, standardisation
from .subspace import SubspaceConfig, new_coupling, slot_data, train_slot, train_subspace

__all__ = [
    "CouplingIntervention",
    "InterventionInfo",
    "LoraConfig",
    "LoraObjective",
    "Margins",
    "PlaneMap",
    "SlotObjective",
    "SubspaceConfig",
    "TrainConfig",
    "activation_checkpointing",
    "conditions",
    "fit_slot_objective",
    "load_intervention",
    "lora_adapter",
    "lora_targets",
    "new_coupling",
    "oblique_coordinates",
    "plane_coordinates_dataset",
    "plane_separability",
    "response_coordinates_dataset",
    "slot_data",
    "standardisation",
    "train_lora",
    "train_loop",
    "train_slot",
    "train_subspace",
]
