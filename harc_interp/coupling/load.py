"""Opening any trained intervention: a `harc train` output (subspace coupling or LoRA) or a bare peft
adapter, as (tuned, base) Variants, and what its `coupling.json` says about it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..artifacts import check_schema, read_json
from ..errors import HarcError
from ..model.edits import Variant
from ..model.hooked import HarcModel
from .lora import lora_adapter
from .maps import SCHEMA_VERSION, CouplingIntervention


@dataclass(frozen=True)
class InterventionInfo:
    """What evaluation and verification need to know of a trained intervention.

    `edited_slots`: the block inputs a confined coupling writes at (empty for LoRA, which changes
    every layer: no slot is "the" intervened one). `attack_slot`: where white-box attacks on it ablate
    upstream of (the first coupling slot; LoRA: the first of its final HARC layers; None: unknown)."""

    kind: str  # "subspace", "lora" or "peft" (a bare adapter folder)
    edited_slots: tuple[int, ...]
    attack_slot: int | None
    meta: dict

    @classmethod
    def read(cls, path: str | Path) -> InterventionInfo:
        path = Path(path)
        meta_path = path / "coupling.json"
        if not meta_path.is_file():
            if not (path / "adapter_config.json").is_file() and not (path / "adapter").is_dir():
                raise HarcError(
                    f"{path} holds neither a `harc train` output (coupling.json) nor a peft adapter "
                    "(adapter_config.json)"
                )
            return cls("peft", (), None, {})
        meta = read_json(meta_path)
        check_schema(meta, "coupling", SCHEMA_VERSION, meta_path, "harc train")
        kind = meta.get("kind") or meta.get("mode")  # schema 1 LoRA outputs recorded only the mode
        if kind == "subspace":
            slots = tuple(meta["slots"])
            return cls(kind, slots, min(slots), meta)
        if kind == "lora":
            final = meta.get("final_slots") or []
            return cls(kind, (), min(final) if final else None, meta)
        raise HarcError(f"{meta_path} names an unknown intervention kind {kind!r}")


@contextmanager
def load_intervention(model: HarcModel, path: str | Path) -> Iterator[tuple[Variant, Variant]]:
    """Open a trained intervention for use: yields (tuned, base) Variants. `path` is a `harc train`
    output (subspace coupling or LoRA) or any peft LoRA adapter directory for this base model."""
    path = Path(path)
    adapter = path / "adapter" if (path / "adapter" / "adapter_config.json").is_file() else path
    if (path / "coupling.safetensors").is_file():
        coupling = CouplingIntervention.load(path)
        yield Variant(coupling.hooks(model), name="coupling"), Variant()
    elif (adapter / "adapter_config.json").is_file():
        with lora_adapter(model, adapter) as peft_model:
            yield Variant(name="lora"), Variant(context=peft_model.disable_adapter, name="base")
    else:
        raise HarcError(
            f"{path} holds neither a coupling (coupling.safetensors) nor a peft adapter (adapter_config.json)"
        )
