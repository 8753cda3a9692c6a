"""The plane stage: coordinates of a prompt set at every slot of a Directions artifact, class
geometry at the chosen slot (both bases), and compliance from greedy generations. See `basis` for the
two coordinate systems and `geometry` for the statistics."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..artifacts import (
    cached_json,
    cached_tensors,
    now,
    provenance,
    stamp_schema,
    versions,
    write_json,
    write_jsonl,
)
from ..capture.activations import CacheConfig, cache_residuals
from ..capture.generate import Generation, generate
from ..capture.judges import DEFAULT_JUDGE, Judge
from ..data.chat import formatter_for
from ..data.prompts import PromptSet
from ..directions.artifact import Directions
from ..errors import HarcError
from ..model.hooked import HarcModel
from .basis import BASES, PLANE_POSITIONS, PlaneCoordinates, plane_coordinates
from .geometry import PlaneGeometry, class_geometry, group_of

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PlaneConfig:
    layer: int | None = None  # None: the directions' selected layer
    max_new_tokens: int = 32  # 0: no generation, compliance not judged
    batch_size: int = 16
    k: float = 1.0
    n_permutations: int = 100
    seed: int = 0
    system_prompt: str | None = None

    def __post_init__(self):
        if self.max_new_tokens < 0 or self.batch_size < 1:
            raise HarcError("max_new_tokens must be >= 0 and batch_size >= 1")
        if self.k <= 0:
            raise HarcError(f"k must be positive, got {self.k}")


@dataclass(frozen=True)
class PlaneResult:
    slot: int
    prompts: PromptSet
    groups: tuple[str, ...]
    complied: tuple[bool | None, ...]
    coords: dict[int, PlaneCoordinates]  # every slot whose plane is well defined
    skipped: dict[int, str]  # slot -> why it has no plane
    geometry: dict[str, PlaneGeometry]  # per basis, at `slot`
    meta: dict


def resolve_slot(directions: Directions, layer: int | None) -> int:
    """The slot to study: `layer` if given, else the directions' selected layer, checked against the
    artifact."""
    slot = directions.selected_layer if layer is None else layer
    if slot is None:
        raise HarcError("the directions artifact has no selected layer: pass a layer slot (--layer)")
    if slot not in directions.layers:
        raise HarcError(
            f"layer slot {slot} is not in the directions artifact (slots {list(directions.layers)})"
        )
    return int(slot)


def run_plane(
    model: HarcModel,
    directions: Directions,
    prompts: PromptSet,
    out_dir: str | Path | None = None,
    config: PlaneConfig = PlaneConfig(),
    judge: Judge = DEFAULT_JUDGE,
    progress: bool = True,
) -> PlaneResult:
    """Coordinates of every prompt at every slot of the artifact, class geometry at the chosen slot,
    and compliance from greedy generations; with `out_dir`, write coords.jsonl, geometry.json,
    generations.jsonl (see `write_plane_run`)."""
    fmt = formatter_for(model, config.system_prompt)
    directions.check_model(model, fmt.template_hash)
    slot = resolve_slot(directions, config.layer)
    if len(prompts) == 0:
        raise HarcError("no prompts for the plane")
    cache_config = CacheConfig(
        layers=tuple(directions.layers),
        positions=PLANE_POSITIONS,
        batch_size=config.batch_size,
        system_prompt=config.system_prompt,
    )
    # What the residuals and answers depend on: a rerun of the main job (or of `harc plane` into the same
    # folder) reuses them instead of redoing the stage's forward passes and generation.
    key = {
        "fingerprint": model.fingerprint,
        "template_hash": fmt.template_hash,
        "ids": prompts.ids,
        "texts": prompts.texts,
        "layers": list(directions.layers),
        "system_prompt": config.system_prompt,
    }

    def residuals() -> dict[str, torch.Tensor]:
        acts = cache_residuals(model, prompts, config=cache_config, progress=progress)
        return {"resid": acts.resid}

    cache_dir = Path(out_dir) / "cache" if out_dir is not None and model.fingerprint else None
    resid = (
        cached_tensors(cache_dir / "residuals.safetensors", key, residuals) if cache_dir else residuals()
    )["resid"]
    coords, skipped = {}, {}
    for i, s in enumerate(directions.layers):
        try:
            coords[s] = plane_coordinates(resid[:, i], directions, s)
        except HarcError as e:
            skipped[s] = str(e)
    if slot not in coords:
        raise HarcError(f"no plane at the chosen slot: {skipped[slot]}")
    groups = tuple(group_of(p) for p in prompts.prompts)
    complied: tuple[bool | None, ...] = (None,) * len(prompts)
    gens = []
    if config.max_new_tokens > 0:

        def answers() -> list[dict]:
            return [
                asdict(g)
                for g in generate(
                    model,
                    prompts,
                    max_new_tokens=config.max_new_tokens,
                    batch_size=config.batch_size,
                    system_prompt=config.system_prompt,
                    progress=progress,
                )
            ]

        gen_key = key | {"max_new_tokens": config.max_new_tokens}
        rows = cached_json(cache_dir / "generations.json", answers, key=gen_key) if cache_dir else answers()
        gens = [Generation(**(r | {"response_ids": tuple(r["response_ids"])})) for r in rows]
        complied = tuple(not judge(g.response) for g in gens)
    geometry = {
        kind: class_geometry(
            coords[slot].view(kind).numpy(),
            groups,
            complied=complied,
            k=config.k,
            kind=kind,
            slot=slot,
            seed=config.seed,
            n_permutations=config.n_permutations,
        )
        for kind in BASES
    }
    meta = {
        "model": model.name,
        "model_fingerprint": model.fingerprint,
        "template_hash": fmt.template_hash,
        "directions_meta": {k: directions.meta.get(k) for k in ("model", "selected_layer", "created")},
        "slot": slot,
        "cos_harm_ref": coords[slot].basis.cos,
        "config": asdict(config),
        "judge": repr(judge),
        "counts": {g: groups.count(g) for g in dict.fromkeys(groups)},
        "created": now(),
        "versions": versions(),
        "provenance": provenance(model),
    }
    result = PlaneResult(slot, prompts, groups, complied, coords, skipped, geometry, meta)
    if out_dir is not None:
        write_plane_run(result, out_dir, gens)
    return result


def coords_rows(result: PlaneResult) -> list[dict]:
    """One row per prompt at the chosen slot (no responses)."""
    c = result.coords[result.slot]
    oblique, ortho = c.view("oblique"), c.view("orthonormal")
    rows = []
    for i, p in enumerate(result.prompts.prompts):
        rows.append(
            {
                "id": p.id,
                "group": result.groups[i],
                "label": p.label,
                "attack_class": p.attack_class,
                "template_id": p.meta.get("template_id"),
                "complied": result.complied[i],
                "slot": result.slot,
                "harmfulness": float(oblique[i, 0]),
                "refusal": float(oblique[i, 1]),
                "orthonormal_view": [float(ortho[i, 0]), float(ortho[i, 1])],
                "oblique": {pos: c.at(pos, "oblique")[i].tolist() for pos in c.positions},
                "orthonormal": {pos: c.at(pos, "orthonormal")[i].tolist() for pos in c.positions},
            }
        )
    return rows


def write_plane_run(
    result: PlaneResult,
    out_dir: str | Path,
    generations: Sequence = (),
) -> dict[str, str]:
    """coords.jsonl, geometry.json and generations.jsonl (responses stay here); the figures are
    `report.figures.write_plane_figures`."""
    out = Path(out_dir)
    write_jsonl(out / "coords.jsonl", coords_rows(result))
    if generations:
        write_jsonl(out / "generations.jsonl", generation_rows(generations, result.groups, result.complied))
    geometry = result.meta | {
        "views": {kind: geo.to_dict() for kind, geo in result.geometry.items()},
        "slots_in_figure": sorted(result.coords),
        "skipped_slots": {str(s): why for s, why in result.skipped.items()},
    }
    write_json(out / "geometry.json", stamp_schema(geometry, "plane_geometry", 1))
    return {"coords": str(out / "coords.jsonl"), "geometry": str(out / "geometry.json")}


def generation_rows(
    generations: Sequence, groups: Sequence[str], complied: Sequence[bool | None]
) -> list[dict]:
    """generations.jsonl rows (responses stay in the run folder, never in logs)."""
    return [
        {"id": g.prompt_id, "group": grp, "prompt": g.instruction, "response": g.response, "complied": c}
        for g, grp, c in zip(generations, groups, complied, strict=True)
    ]
