"""The harmfulness–refusal plane: coordinates, attack-class geometry, separability and compliance.

Two coordinate systems on span{v_harm, v_ref} at one layer slot:

- **oblique** (the paper's view): projections on the unit directions, `(x·v̂_harm, x·v̂_ref)`. The
  axes are not orthogonal when c = cos(v_harm, v_ref) ≠ 0, so they share part of what they measure.
- **orthonormal** (what an intervention confined to the plane edits): `(x·e₁, x·e₂)` with the
  Gram–Schmidt basis e₁ = v̂_harm, e₂ = (v̂_ref − c·v̂_harm)/√(1 − c²). The plane component of x is
  e₁(x·e₁) + e₂(x·e₂). A plane with |c| > 0.99 is degenerate and refused (`HarcError`).

Both are computed at every requested position. The **plane view** of a prompt reads axis 1 at t_inst
(where harmfulness is read) and axis 2 at t_post (where refusal is read), as in METHOD §2; in the
oblique basis that is `(h_inst·v̂_harm, h_post·v̂_ref)`.

**Class geometry** on a plane view: per group (attack class, else label) the centroid, covariance and
standard deviations, the displacement of the centroid from the plain-harmful centroid per axis, that
displacement in units of the plain-harmful standard deviation along the axis (z), and the fraction of
the harmful→harmless gap it covers. **Suppression rule**: a class suppresses an axis when its centroid
lies more than k (default 1) plain-harmful standard deviations below the plain-harmful centroid on that
axis (z < −k); `suppresses` is "harmfulness", "refusal", "both" or "neither" accordingly.
**Separability**: stratified k-fold cross-validated accuracy of linear discriminant analysis on the 2-D
coordinates, against chance (majority-class rate and 1/K for balanced accuracy) with a permutation
p-value. **Compliance**: the share of a class's generations the refusal judge does not call a refusal.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Collection, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from einops import einsum
from jaxtyping import Float
from torch import Tensor

from .activations import CacheConfig, cache_residuals
from .artifacts import now, versions, write_json, write_jsonl
from .chat import formatter_for
from .directions import Directions
from .errors import HarcError
from .evaluate import DEFAULT_JUDGE, Judge
from .generate import generate
from .model import HarcModel
from .prompts import Prompt, PromptSet, expand_attacks

log = logging.getLogger(__name__)

MAX_ABS_COS = 0.99
PLANE_POSITIONS = ("t_inst", "t_post")
REFERENCE = "harmful"
HARMLESS = "harmless"
BASES = ("oblique", "orthonormal")
AXIS_TITLES = {
    "oblique": ("harmfulness: h(t_inst)·v̂_harm", "refusal: h(t_post)·v̂_ref"),
    "orthonormal": ("e₁ = v̂_harm: h(t_inst)·e₁", "e₂ = v̂_ref ⟂ v̂_harm: h(t_post)·e₂"),
}


# ------------------------------------------------------------------------------------------------
# Basis and coordinates


def unit_vector(v: Tensor, name: str, slot: int) -> Tensor:
    v = v.detach().double().cpu()
    norm = v.norm()
    if not torch.isfinite(v).all():
        raise HarcError(f"direction '{name}' at slot {slot} holds NaN or inf: recompute the directions")
    if norm < 1e-8:
        raise HarcError(
            f"direction '{name}' is zero at slot {slot} (e.g. the embedding slot, where t_post is the same "
            "token in every prompt): choose another layer slot"
        )
    return v / norm


@dataclass(frozen=True)
class PlaneBasis:
    """The plane at one slot: unit directions (oblique axes) and an orthonormal basis of their span."""

    slot: int
    names: tuple[str, str]
    units: Float[Tensor, "plane d_model"]  # rows v̂_a, v̂_b (float64)
    basis: Float[Tensor, "plane d_model"]  # rows e₁ = v̂_a, e₂ = (v̂_b − c v̂_a)/√(1 − c²) (float64)
    cos: float

    def oblique(self, x: Float[Tensor, "*rest d_model"]) -> Float[Tensor, "*rest plane"]:
        """Projections on the unit directions: (x·v̂_a, x·v̂_b), float64."""
        return einsum(x.double(), self.units.to(x.device), "... d_model, plane d_model -> ... plane")

    def orthonormal(self, x: Float[Tensor, "*rest d_model"]) -> Float[Tensor, "*rest plane"]:
        """Coordinates in the orthonormal basis: (x·e₁, x·e₂), float64."""
        return einsum(x.double(), self.basis.to(x.device), "... d_model, plane d_model -> ... plane")


def plane_basis(
    a: Float[Tensor, " d_model"],
    b: Float[Tensor, " d_model"],
    *,
    slot: int = -1,
    names: tuple[str, str] = ("v_harm", "v_ref"),
    max_abs_cos: float = MAX_ABS_COS,
) -> PlaneBasis:
    """Gram–Schmidt basis of span{a, b}; `HarcError` when the two are (nearly) collinear."""
    ua, ub = unit_vector(a, names[0], slot), unit_vector(b, names[1], slot)
    c = float(ua @ ub)
    if abs(c) > max_abs_cos:
        raise HarcError(
            f"{names[0]} and {names[1]} are nearly collinear at slot {slot} (cos = {c:.4f}, |cos| > "
            f"{max_abs_cos}): they span no plane there; choose another layer slot or recompute the directions"
        )
    e2 = ub - c * ua
    e2 = e2 / e2.norm()
    return PlaneBasis(slot, names, torch.stack([ua, ub]), torch.stack([ua, e2]), c)


def basis_from_directions(
    directions: Directions, slot: int, names: tuple[str, str] = ("v_harm", "v_ref")
) -> PlaneBasis:
    return plane_basis(
        directions.unit(names[0], slot), directions.unit(names[1], slot), slot=slot, names=names
    )


@dataclass(frozen=True)
class PlaneCoordinates:
    """Coordinates of a prompt set in the plane at one slot, in both bases, at each position."""

    basis: PlaneBasis
    positions: tuple[str, ...]
    oblique: Float[Tensor, "prompt npos plane"]
    orthonormal: Float[Tensor, "prompt npos plane"]

    @property
    def slot(self) -> int:
        return self.basis.slot

    def at(self, position: str, kind: str = "oblique") -> Float[Tensor, "prompt plane"]:
        if position not in self.positions:
            raise HarcError(f"position '{position}' has no coordinates; have {self.positions}")
        return self._coords(kind)[:, self.positions.index(position)]

    def view(self, kind: str = "oblique") -> Float[Tensor, "prompt plane"]:
        """The plane view: axis 1 read at t_inst, axis 2 at t_post (the one position if only one)."""
        coords = self._coords(kind)
        if len(self.positions) == 1:
            return coords[:, 0]
        x = self.at("t_inst", kind)[:, 0]
        y = self.at("t_post", kind)[:, 1]
        return torch.stack([x, y], dim=-1)

    def _coords(self, kind: str) -> Tensor:
        if kind not in BASES:
            raise HarcError(f"basis must be one of {BASES}, got '{kind}'")
        return self.oblique if kind == "oblique" else self.orthonormal


def plane_coordinates(
    resid: Float[Tensor, "prompt npos d_model"],
    directions: Directions | PlaneBasis,
    slot: int | None = None,
    *,
    positions: Sequence[str] = PLANE_POSITIONS,
    names: tuple[str, str] = ("v_harm", "v_ref"),
) -> PlaneCoordinates:
    """Oblique and orthonormal coordinates of residuals `resid[prompt, position, d_model]` read at
    `slot` (e.g. `acts.resid[:, acts.layers.index(slot)]` with positions t_inst, t_post)."""
    if isinstance(directions, PlaneBasis):
        basis = directions
        if slot is not None and slot != basis.slot:
            raise HarcError(f"the basis is for slot {basis.slot}, not slot {slot}")
    else:
        if slot is None:
            raise HarcError("pass the layer slot the residuals were read at")
        basis = basis_from_directions(directions, slot, names)
    if resid.shape[1] != len(positions):
        raise HarcError(f"resid has {resid.shape[1]} positions, but positions are {tuple(positions)}")
    return PlaneCoordinates(basis, tuple(positions), basis.oblique(resid), basis.orthonormal(resid))


# ------------------------------------------------------------------------------------------------
# Class geometry, separability, compliance


def group_of(p: Prompt) -> str:
    """A prompt's group in the plane: its attack class, else its label."""
    return p.attack_class or p.label or "unlabelled"


@dataclass(frozen=True)
class ClassGeometry:
    """One group's statistics on a plane view (axis order: harmfulness, refusal)."""

    name: str
    n: int
    centroid: tuple[float, float]
    covariance: tuple[tuple[float, float], tuple[float, float]]
    std: tuple[float, float]
    displacement: tuple[float, float]  # centroid − plain-harmful centroid
    displacement_z: tuple[float, float]  # displacement / plain-harmful std along the axis
    gap_fraction: tuple[float | None, float | None]  # displacement / (harmless − harmful centroid)
    suppresses: str  # "harmfulness" | "refusal" | "both" | "neither" | "reference"
    compliance_rate: float | None  # share of judged generations that are not refusals
    n_judged: int
    vs_reference: dict | None  # cross-validated separability from plain harmful (binary)


@dataclass(frozen=True)
class PlaneGeometry:
    """Class geometry and separability of one plane view at one slot."""

    kind: str
    slot: int
    axes: tuple[str, str]
    reference: str
    k: float
    reference_std: tuple[float, float]
    classes: tuple[ClassGeometry, ...]
    separability: dict
    separability_attacks: dict
    rule: str = field(
        default="suppresses an axis when the class centroid is more than k plain-harmful standard "
        "deviations below the plain-harmful centroid on that axis (displacement_z < -k)"
    )

    def get(self, name: str) -> ClassGeometry:
        for c in self.classes:
            if c.name == name:
                return c
        raise HarcError(f"no class '{name}' in this geometry; classes: {[c.name for c in self.classes]}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["classes"] = {c["name"]: c for c in d["classes"]}
        return d


def suppression(z: Sequence[float], k: float = 1.0) -> str:
    """Which axes a class suppresses, from its displacement z-scores (harmfulness, refusal)."""
    harm, ref = z[0] < -k, z[1] < -k
    return {(True, True): "both", (True, False): "harmfulness", (False, True): "refusal"}.get(
        (harm, ref), "neither"
    )


def compliance_rates(groups: Sequence[str], complied: Sequence[bool | None]) -> dict[str, dict]:
    """Per group: share of judged generations that are not refusals (None when none was judged)."""
    if len(groups) != len(complied):
        raise HarcError(f"{len(groups)} prompts but {len(complied)} compliance labels")
    out = {}
    for g in dict.fromkeys(groups):
        judged = [c for gg, c in zip(groups, complied, strict=True) if gg == g and c is not None]
        out[g] = {"n_judged": len(judged), "rate": (sum(judged) / len(judged)) if judged else None}
    return out


def separability(
    points: Float[np.ndarray, "n plane"],
    groups: Sequence[str],
    *,
    n_splits: int = 5,
    seed: int = 0,
    n_permutations: int = 100,
) -> dict:
    """Cross-validated accuracy of telling the groups apart from their 2-D coordinates.

    Stratified k-fold (k = min(n_splits, smallest group)) linear discriminant analysis (a linear
    classifier with a shared covariance, closed form); groups with a single point are left out. Chance: the majority-group rate for
    accuracy and 1/K for balanced accuracy; `p_value` from a label-permutation test of balanced accuracy.
    """
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
    from sklearn.metrics import balanced_accuracy_score, confusion_matrix
    from sklearn.model_selection import StratifiedKFold, cross_val_predict, permutation_test_score

    x = np.asarray(points, dtype=np.float64)
    y = np.asarray(groups)
    names, counts = np.unique(y, return_counts=True)
    dropped = [str(n) for n, c in zip(names, counts, strict=True) if c < 2]
    keep = np.isin(y, [n for n, c in zip(names, counts, strict=True) if c >= 2])
    x, y = x[keep], y[keep]
    classes = [str(n) for n in dict.fromkeys(y.tolist())]
    if len(classes) < 2:
        return {"classes": classes, "dropped": dropped, "accuracy": None, "note": "fewer than two groups"}
    folds = int(min(n_splits, min(np.count_nonzero(y == c) for c in classes)))
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    clf = LinearDiscriminantAnalysis()
    pred = cross_val_predict(clf, x, y, cv=cv)
    result = {
        "classes": classes,
        "dropped": dropped,
        "n": int(len(y)),
        "n_splits": folds,
        "accuracy": float((pred == y).mean()),
        "chance_accuracy": float(max(np.count_nonzero(y == c) for c in classes) / len(y)),
        "balanced_accuracy": float(balanced_accuracy_score(y, pred)),
        "chance_balanced_accuracy": 1.0 / len(classes),
        "confusion": confusion_matrix(y, pred, labels=classes).tolist(),
        "p_value": None,
    }
    if n_permutations > 0:
        _, _, p = permutation_test_score(
            clf,
            x,
            y,
            cv=cv,
            n_permutations=n_permutations,
            scoring="balanced_accuracy",
            random_state=seed,
        )
        result["p_value"] = float(p)
    return result


def class_geometry(
    points: Float[np.ndarray, "n plane"],
    groups: Sequence[str],
    *,
    complied: Sequence[bool | None] | None = None,
    reference: str = REFERENCE,
    harmless: str = HARMLESS,
    k: float = 1.0,
    kind: str = "oblique",
    slot: int = -1,
    seed: int = 0,
    n_permutations: int = 100,
) -> PlaneGeometry:
    """Per-group centroid, covariance, displacement from the `reference` (plain harmful) centroid,
    suppressed axes, compliance rate, and cross-validated separability (see the module docstring)."""
    x = np.asarray(points, dtype=np.float64)
    groups = list(groups)
    if x.ndim != 2 or x.shape[1] != 2 or len(groups) != x.shape[0]:
        raise HarcError(f"need points [n, 2] and one group per point; got {x.shape} and {len(groups)}")
    if not np.isfinite(x).all():
        raise HarcError("plane coordinates hold NaN or inf")
    g = np.asarray(groups)
    ref = x[g == reference]
    if len(ref) < 2:
        raise HarcError(
            f"class geometry needs at least two plain '{reference}' prompts as the reference; found "
            f"{len(ref)}: add a file of plain harmful requests (label '{reference}')"
        )
    ref_mean, ref_std = ref.mean(0), ref.std(0, ddof=1)
    if (ref_std <= 0).any():
        raise HarcError(f"the '{reference}' prompts do not spread along an axis (std {ref_std.tolist()})")
    gap = x[g == harmless].mean(0) - ref_mean if (g == harmless).any() else None
    rates = compliance_rates(groups, complied) if complied is not None else {}
    classes = []
    for name in dict.fromkeys(groups):
        pts = x[g == name]
        cov = np.cov(pts, rowvar=False, ddof=1) if len(pts) > 1 else np.zeros((2, 2))
        disp = pts.mean(0) - ref_mean
        z = disp / ref_std
        gap_fraction = tuple(
            None if gap is None or abs(gap[i]) < 1e-12 else float(disp[i] / gap[i]) for i in range(2)
        )
        vs_ref = None
        if name != reference:
            sub = (g == name) | (g == reference)
            vs_ref = separability(x[sub], g[sub].tolist(), seed=seed, n_permutations=0)
        rate = rates.get(name, {"rate": None, "n_judged": 0})
        classes.append(
            ClassGeometry(
                name=name,
                n=len(pts),
                centroid=(float(pts[:, 0].mean()), float(pts[:, 1].mean())),
                covariance=((float(cov[0, 0]), float(cov[0, 1])), (float(cov[1, 0]), float(cov[1, 1]))),
                std=(float(np.sqrt(cov[0, 0])), float(np.sqrt(cov[1, 1]))),
                displacement=(float(disp[0]), float(disp[1])),
                displacement_z=(float(z[0]), float(z[1])),
                gap_fraction=gap_fraction,
                suppresses="reference" if name == reference else suppression((float(z[0]), float(z[1])), k),
                compliance_rate=rate["rate"],
                n_judged=rate["n_judged"],
                vs_reference=vs_ref,
            )
        )
    plain = {reference, harmless}
    attack = np.asarray([gg not in plain for gg in groups])
    return PlaneGeometry(
        kind=kind,
        slot=slot,
        axes=AXIS_TITLES.get(kind, ("axis 1", "axis 2")),
        reference=reference,
        k=k,
        reference_std=(float(ref_std[0]), float(ref_std[1])),
        classes=tuple(classes),
        separability=separability(x, groups, seed=seed, n_permutations=n_permutations),
        separability_attacks=separability(
            x[attack], g[attack].tolist(), seed=seed, n_permutations=n_permutations
        ),
    )


# ------------------------------------------------------------------------------------------------
# Prompt sets for the plane: plain sets plus attack classes (full prompts and filled templates)


def study_prompts(
    sets: Sequence[PromptSet],
    *,
    goals: PromptSet | None = None,
    n_goals: int = 8,
    per_class: int | None = None,
    classes: Sequence[str] | None = None,
    exclude_ids: Collection[str] = (),
    seed: int = 0,
) -> PromptSet:
    """Plain prompts (grouped by label), full jailbreak prompts (by attack class) and attack templates
    filled with `n_goals` harmful goals (`goals`, else the plain harmful prompts among `sets`).

    `classes` keeps only those attack classes (plain labelled prompts are always kept); `per_class`
    draws a deterministic sample of at most that many prompts per group; `exclude_ids` drops prompts
    (and goals) by id, e.g. those used to compute the directions (`directions_training_ids`)."""
    exclude = set(exclude_ids)
    if classes is not None:
        merged = PromptSet(
            "prompts", tuple(p for s in sets for p in s.prompts), tuple(t for s in sets for t in s.templates)
        )
        sets = [merged.attack_classes(classes)]
    prompts = [p for s in sets for p in s.prompts if p.id not in exclude]
    templates = [t for s in sets for t in s.templates]
    if templates:
        pool = goals.prompts if goals is not None else [p for p in prompts if group_of(p) == REFERENCE]
        pool = [p for p in pool if p.id not in exclude]
        if not pool:
            raise HarcError(
                "attack templates need harmful goals to fill them: pass a goals file (--goals) or include "
                "plain harmful prompts (label 'harmful')"
            )
        chosen = PromptSet("goals", tuple(pool)).sample(min(n_goals, len(pool)), seed=seed).prompts
        prompts += list(expand_attacks(templates, chosen).prompts)
    if not prompts:
        raise HarcError("no prompts left for the plane (check --classes and the prompt files)")
    seen: set[str] = set()
    for p in prompts:
        if p.id in seen:
            raise HarcError(f"prompt id '{p.id}' occurs twice: give each file's rows distinct ids")
        seen.add(p.id)
    if per_class is not None:
        rng = random.Random(seed)
        by_group: dict[str, list[int]] = {}
        for i, p in enumerate(prompts):
            by_group.setdefault(group_of(p), []).append(i)
        keep: set[int] = set()
        for idx in by_group.values():
            keep |= set(rng.sample(idx, min(per_class, len(idx))))
        prompts = [p for i, p in enumerate(prompts) if i in keep]
    return PromptSet("plane", tuple(prompts))


def directions_training_ids(directions: Directions) -> set[str]:
    """Ids of the prompts a Directions artifact was computed or selected on (train and val splits)."""
    splits = directions.meta.get("splits") or {}
    return {i for k, ids in splits.items() if not k.endswith("_test") for i in ids}


# ------------------------------------------------------------------------------------------------
# The plane stage


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
    generations.jsonl and figures/ (see `write_plane_run`)."""
    fmt = formatter_for(model, config.system_prompt)
    directions.check_model(model, fmt.template_hash)
    slot = resolve_slot(directions, config.layer)
    if len(prompts) == 0:
        raise HarcError("no prompts for the plane")
    acts = cache_residuals(
        model,
        prompts,
        config=CacheConfig(
            layers=tuple(directions.layers),
            positions=PLANE_POSITIONS,
            batch_size=config.batch_size,
            system_prompt=config.system_prompt,
        ),
        progress=progress,
    )
    coords, skipped = {}, {}
    for i, s in enumerate(acts.layers):
        try:
            coords[s] = plane_coordinates(acts.resid[:, i], directions, s)
        except HarcError as e:
            skipped[s] = str(e)
    if slot not in coords:
        raise HarcError(f"no plane at the chosen slot: {skipped[slot]}")
    groups = tuple(group_of(p) for p in prompts.prompts)
    complied: tuple[bool | None, ...] = (None,) * len(prompts)
    gens = []
    if config.max_new_tokens > 0:
        gens = generate(
            model,
            prompts,
            max_new_tokens=config.max_new_tokens,
            batch_size=config.batch_size,
            system_prompt=config.system_prompt,
            progress=progress,
        )
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
    }
    result = PlaneResult(slot, prompts, groups, complied, coords, skipped, geometry, meta)
    if out_dir is not None:
        write_plane_run(result, out_dir, gens, directions)
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


def plane_figures(result: PlaneResult) -> dict:
    """The plane scatter with a layer slider (oblique and orthonormal axes) and the class-displacement
    bars, as plotly figures keyed by file stem."""
    from .plots import displacement_figure, plane_figure

    hover = [p.id for p in result.prompts.prompts]
    figures = {}
    for kind in BASES:
        figures[f"plane_{kind}"] = plane_figure(
            {s: c.view(kind).numpy() for s, c in sorted(result.coords.items())},
            result.groups,
            selected=result.slot,
            complied=result.complied,
            hover=hover,
            axis_titles=AXIS_TITLES[kind],
            title=f"Harmfulness–refusal plane ({kind} axes), {result.meta['model']}",
        )
    figures["class_displacement"] = displacement_figure(result.geometry["oblique"].to_dict())
    return figures


def write_plane_run(
    result: PlaneResult,
    out_dir: str | Path,
    generations: Sequence = (),
    directions: Directions | None = None,
) -> dict[str, str]:
    """coords.jsonl, geometry.json, generations.jsonl (responses stay here) and figures/ (plane,
    class displacement, and the directions' cosine and AUROC curves when the artifact has metrics)."""
    from .plots import cosine_figure, metric_curves_figure, write_figure

    out = Path(out_dir)
    write_jsonl(out / "coords.jsonl", coords_rows(result))
    if generations:
        write_jsonl(
            out / "generations.jsonl",
            [
                {
                    "id": g.prompt_id,
                    "group": grp,
                    "prompt": g.instruction,
                    "response": g.response,
                    "complied": c,
                }
                for g, grp, c in zip(generations, result.groups, result.complied, strict=True)
            ],
        )
    geometry = result.meta | {
        "views": {kind: geo.to_dict() for kind, geo in result.geometry.items()},
        "slots_in_figure": sorted(result.coords),
        "skipped_slots": {str(s): why for s, why in result.skipped.items()},
    }
    write_json(out / "geometry.json", geometry)
    figures = plane_figures(result)
    metrics = (directions.meta.get("metrics") if directions is not None else None) or {}
    if "cos_harm_ref" in metrics:
        figures["cosine_by_layer"] = cosine_figure(metrics)
    if "probes" in metrics:
        figures["auroc_by_layer"] = metric_curves_figure(metrics)
    written = [p for stem, fig in figures.items() for p in write_figure(fig, out / "figures" / stem)]
    return {"coords": str(out / "coords.jsonl"), "geometry": str(out / "geometry.json")} | {
        p.name: str(p) for p in written
    }
