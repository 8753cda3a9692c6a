"""Attack-class geometry on a plane view, separability and compliance.

**Class geometry**: per group (attack class, else label) the centroid, covariance and standard
deviations, the displacement of the centroid from the plain-harmful centroid per axis, that
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
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
from jaxtyping import Float

from ..data.prompts import Prompt
from ..errors import HarcError
from .basis import AXIS_TITLES, HARMLESS, REFERENCE

log = logging.getLogger(__name__)


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
        """The statistics of one class by name."""
        for c in self.classes:
            if c.name == name:
                return c
        raise HarcError(f"no class '{name}' in this geometry; classes: {[c.name for c in self.classes]}")

    def to_dict(self) -> dict:
        """JSON-ready, classes keyed by name."""
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
    classifier with a shared covariance, closed form); groups with a single point are left out, and groups
    too small for any fold to train on (LDA needs more points than groups) give no accuracy, with a note
    and a warning rather than an error. Chance: the majority-group rate for
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
    try:
        pred = cross_val_predict(clf, x, y, cv=cv)
    except ValueError as e:  # a training fold with no more points than groups
        log.warning(
            "separability skipped: %d points in %d groups are too few to cross-validate", len(y), len(classes)
        )
        return {
            "classes": classes,
            "dropped": dropped,
            "accuracy": None,
            "note": f"too few points per group ({e})",
        }
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
