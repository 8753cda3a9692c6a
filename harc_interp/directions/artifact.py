"""Difference-in-means directions (float64) and the Directions artifact.

v_harm = mean(harmful) − mean(harmless) at t_inst; v_ref = the same at t_post; the grid holds the
difference at every cached prompt position (t_inst and each post-instruction token); the
response-side directions use the mean over the first N response tokens:
v_harm_resp = mean(harmful prompt + harmful completion) − mean(harmless prompt + helpful completion),
v_ref_resp = mean(harmful prompt + refusal) − mean(harmless prompt + helpful completion).
Each is stored as a unit vector per layer slot plus its raw norm.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from torch import Tensor

from ..artifacts import (
    check_schema,
    load_tensors,
    now,
    read_json,
    save_tensors,
    stamp_schema,
    versions,
    write_json,
)
from ..errors import HarcError
from ..shapes import Direction
from .means import diff_in_means, unit_and_norm
from .probes import LinearProbes

DIRECTION_NAMES = ("v_harm", "v_ref", "v_harm_resp", "v_ref_resp")
# 2: schema recorded, logistic probes saved. 1 (no schema field): the same fields without probes.
SCHEMA_VERSION = 2


@dataclass(frozen=True)
class Selection:
    """The layer choice a directions run made, and the scores behind it."""

    method: str  # "arditi" or "harc": the method that picked the slot
    requested_method: str
    arditi_filters_relaxed: bool
    selected_layer: int
    refusal_position: str  # the grid position whose direction the refusal checks test
    arditi: dict  # best candidate, every candidate's scores, the unedited baseline
    harc_scores: list
    harc_top_layers: list

    @classmethod
    def from_json(cls, row: dict) -> Selection:
        return cls(**{f: row[f] for f in cls.__dataclass_fields__})

    def to_json(self) -> dict:
        """This selection as a JSON-ready dict."""
        return asdict(self)


@dataclass(frozen=True)
class Directions:
    """Harmfulness and refusal directions per layer slot, with provenance and metrics in `meta`.

    Tensors: `v_harm`, `v_ref` (and optionally `v_harm_resp`, `v_ref_resp`) `[layer, d_model]` unit
    vectors with `norm_*` `[layer]`; `grid` `[layer, npos, d_model]` unit vectors over
    `grid_positions` with `grid_norms` `[layer, npos]`; `probes`, the logistic harmfulness probes
    per position and slot (None until the directions stage fits them). The stage's results are read
    through typed properties (`selection`, `causal_validation`, `metrics`, `counts`, `splits`,
    `refusal_tokens`); `meta` is their stored form.
    """

    layers: tuple[int, ...]
    vectors: dict[str, Tensor]
    norms: dict[str, Tensor]
    grid: Tensor
    grid_norms: Tensor
    grid_positions: tuple[str, ...]
    meta: dict = field(default_factory=dict)
    probes: LinearProbes | None = None

    def unit(self, name: str, slot: int) -> Direction:
        """The unit direction `name` at layer slot `slot`."""
        return self.vectors[self._check(name)][self._row(slot)]

    def raw(self, name: str, slot: int) -> Direction:
        """The un-normalised difference in means (unit × norm), e.g. for activation addition."""
        return self.unit(name, slot) * self.norms[name][self._row(slot)]

    def grid_raw(self, slot: int, position: str) -> Direction:
        """The raw (un-normalised) difference in means at `slot` and grid position `position`."""
        j = self.grid_positions.index(position)
        return self.grid[self._row(slot), j] * self.grid_norms[self._row(slot), j]

    @property
    def selected_layer(self) -> int | None:
        """The slot the selection chose, if any."""
        return self.meta.get("selected_layer")

    @property
    def selection(self) -> Selection | None:
        """The selection record (method, candidates, whether filters were relaxed), if any."""
        row = self.meta.get("selection")
        return None if row is None else Selection.from_json(row)

    @property
    def causal_validation(self) -> dict | None:
        """Refusal rates on held-out prompts with each direction ablated or added (`directions.causal`)."""
        return self.meta.get("causal_validation")

    @property
    def metrics(self) -> dict:
        """Per-layer probe and projection metrics, cosines and the best harmfulness layers."""
        return self.meta.get("metrics") or {}

    @property
    def counts(self) -> dict[str, int]:
        """Prompt counts per split and class after filtering."""
        return self.meta.get("counts") or {}

    @property
    def splits(self) -> dict[str, list[str]]:
        """Prompt ids per split: harmful/harmless × train, val, test."""
        return self.meta.get("splits") or {}

    @property
    def refusal_tokens(self) -> list[int]:
        """Token ids that start the model's refusals (the refusal score's tokens)."""
        return list(self.meta.get("refusal_tokens") or [])

    @property
    def refusal_token_strings(self) -> list[str]:
        """The refusal tokens as text."""
        return list(self.meta.get("refusal_token_strings") or [])

    def training_ids(self) -> set[str]:
        """Ids of the prompts these directions were computed or selected on (train and val splits):
        what a held-out evaluation must leave out."""
        return {i for k, ids in self.splits.items() if not k.endswith("_test") for i in ids}

    def has(self, name: str) -> bool:
        """Whether direction `name` is in this artifact (the response-side ones are optional)."""
        return name in self.vectors

    def _check(self, name: str) -> str:
        if name not in self.vectors:
            raise HarcError(f"direction '{name}' is not in this artifact (has {sorted(self.vectors)})")
        return name

    def _row(self, slot: int) -> int:
        if slot not in self.layers:
            raise HarcError(
                f"layer slot {slot} is not in this artifact (slots {self.layers[0]}..{self.layers[-1]})"
            )
        return self.layers.index(slot)

    def with_meta(self, **updates) -> Directions:
        """A copy with `updates` merged into the metadata."""
        return replace(self, meta=self.meta | updates)

    def save(self, out_dir: str | Path) -> Path:
        """Write directions.safetensors and directions.json to `out_dir` (atomically); returns the folder."""
        out_dir = Path(out_dir)
        tensors = {"grid": self.grid, "grid_norms": self.grid_norms}
        for name, v in self.vectors.items():
            tensors[name] = v
            tensors[f"norm_{name}"] = self.norms[name]
        if self.probes is not None:
            tensors |= self.probes.tensors()
        save_tensors(out_dir / "directions.safetensors", tensors)
        meta = self.meta | {
            "layers": list(self.layers),
            "grid_positions": list(self.grid_positions),
            "directions": sorted(self.vectors),
            "probe_positions": None if self.probes is None else list(self.probes.positions),
            "saved": now(),
            "versions": versions(),
        }
        write_json(out_dir / "directions.json", stamp_schema(meta, "directions", SCHEMA_VERSION))
        return out_dir

    @classmethod
    def load(cls, out_dir: str | Path, model=None, template_hash: str | None = None) -> Directions:
        """Load an artifact; with `model` (and `template_hash`), refuse one made for another model/template."""
        out_dir = Path(out_dir)
        meta = read_json(out_dir / "directions.json")
        check_schema(meta, "directions", SCHEMA_VERSION, out_dir / "directions.json", "harc directions")
        t = load_tensors(out_dir / "directions.safetensors")
        names = meta.get("directions", [])
        probe_keys = ("probe_mean", "probe_scale", "probe_coef", "probe_intercept")
        missing = [n for n in names if n not in t or f"norm_{n}" not in t] + [
            k
            for k in ("grid", "grid_norms", *(probe_keys if meta.get("probe_positions") else ()))
            if k not in t
        ]
        if missing:
            raise HarcError(
                f"{out_dir}/directions.safetensors lacks {missing}: corrupt or from another version"
            )
        for name, v in t.items():
            if not torch.isfinite(v).all():
                raise HarcError(f"{out_dir}: tensor '{name}' holds NaN or inf")
        d = cls(
            tuple(meta["layers"]),
            {n: t[n] for n in names},
            {n: t[f"norm_{n}"] for n in names},
            t["grid"],
            t["grid_norms"],
            tuple(meta["grid_positions"]),
            meta,
            LinearProbes.from_tensors(t, meta["probe_positions"], meta["layers"])
            if meta.get("probe_positions")
            else None,
        )
        if model is not None:
            d.check_model(model, template_hash)
        return d

    def check_model(self, model, template_hash: str | None = None) -> None:
        """`HarcError` unless these directions were computed on `model` (weights fingerprint, width and, if
        given, chat template)."""
        fp = self.meta.get("model_fingerprint")
        if fp is not None and len(fp) == 16:  # before every weight was fingerprinted
            raise HarcError(
                "these directions carry an older harc_interp's partial model fingerprint (it covered only part "
                f"of the embeddings): recompute them with `harc directions --model {model.name}`"
            )
        if fp != model.fingerprint:
            raise HarcError(
                f"these directions were computed on model '{self.meta.get('model')}' (fingerprint {fp}), not on "
                f"'{model.name}' ({model.fingerprint}): recompute them with `harc directions --model {model.name}`"
            )
        if self.vectors["v_harm"].shape[-1] != model.d_model:
            raise HarcError(
                f"directions have width {self.vectors['v_harm'].shape[-1]}, the model {model.d_model}"
            )
        if template_hash is not None and self.meta.get("template_hash") != template_hash:
            raise HarcError(
                "these directions were computed with a different chat template or system prompt "
                f"({self.meta.get('template_hash')} vs {template_hash}): positions would not match"
            )


def directions_from_activations(acts, harmful_mask: Tensor, harmless_mask: Tensor) -> Directions:
    """v_harm, v_ref and the position grid from one prompt-side cache holding both sets."""
    for p in ("t_inst", "t_post"):
        if p not in acts.positions:
            raise HarcError(
                f"the cache lacks position '{p}'; cache with positions t_inst,t_post,post_instruction"
            )
    if harmful_mask.sum() < 2 or harmless_mask.sum() < 2:
        raise HarcError("need at least two harmful and two harmless prompts")
    grid_positions = tuple(p for p in acts.positions if p == "t_inst" or p.startswith("post_")) or (
        "t_inst",
        "t_post",
    )
    cols = [acts.positions.index(p) for p in grid_positions]
    resid = acts.resid[:, :, cols]
    diff = diff_in_means(resid[harmful_mask], resid[harmless_mask])  # [layer, npos, d]
    grid, grid_norms = unit_and_norm(diff)
    vectors, norms = {}, {}
    for name, pos in (("v_harm", "t_inst"), ("v_ref", "t_post")):
        j = acts.positions.index(pos)
        v = diff_in_means(acts.resid[harmful_mask, :, j], acts.resid[harmless_mask, :, j])
        vectors[name], norms[name] = unit_and_norm(v)
    meta = {k: acts.meta.get(k) for k in ("model", "model_fingerprint", "template_hash", "system_prompt")}
    meta |= {"n_harmful": int(harmful_mask.sum()), "n_harmless": int(harmless_mask.sum()), "created": now()}
    return Directions(tuple(acts.layers), vectors, norms, grid, grid_norms, grid_positions, meta)


def add_response_directions(d: Directions, harmful_compliance, refusal, helpful) -> Directions:
    """Add v_harm_resp and v_ref_resp from three `response_mean` caches over the same layer slots."""
    vectors, norms = dict(d.vectors), dict(d.norms)
    for acts in (harmful_compliance, refusal, helpful):
        if tuple(acts.layers) != d.layers or acts.positions != ("response_mean",):
            raise HarcError("response caches must hold only 'response_mean' at the directions' layer slots")
    base = helpful.resid[:, :, 0]
    for name, acts in (("v_harm_resp", harmful_compliance), ("v_ref_resp", refusal)):
        vectors[name], norms[name] = unit_and_norm(diff_in_means(acts.resid[:, :, 0], base))
    counts = {
        "n_harmful_compliance": len(harmful_compliance.prompt_ids),
        "n_refusal": len(refusal.prompt_ids),
        "n_helpful": len(helpful.prompt_ids),
    }
    return replace(d, vectors=vectors, norms=norms, meta=d.meta | counts)
