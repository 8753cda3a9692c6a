"""Per-layer, per-position diagnostics of a direction (held-out projection and probe metrics, cosines)
and the fitted logistic probes a Directions artifact keeps for scoring new prompts."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Float
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import Tensor

from ..errors import HarcError
from .means import diff_in_means


def projection_metrics(
    train_pos: Float[Tensor, "n1 d_model"],
    train_neg: Float[Tensor, "n2 d_model"],
    test_pos: Float[Tensor, "m1 d_model"],
    test_neg: Float[Tensor, "m2 d_model"],
) -> dict[str, float]:
    """Held-out AUROC and accuracy of the projection on the train difference in means (threshold:
    the midpoint of the projected train class means)."""
    v = diff_in_means(train_pos, train_neg)
    if v.norm() < 1e-12:  # identical class means (e.g. a template token at the embedding): no signal
        return {"auroc": 0.5, "accuracy": 0.5}
    unit = v / v.norm()
    proj = lambda x: (x.double() @ unit).numpy()  # noqa: E731
    threshold = (proj(train_pos).mean() + proj(train_neg).mean()) / 2
    scores = np.concatenate([proj(test_pos), proj(test_neg)])
    labels = np.concatenate([np.ones(len(test_pos)), np.zeros(len(test_neg))])
    return {
        "auroc": float(roc_auc_score(labels, scores)),
        "accuracy": float(((scores > threshold) == labels).mean()),
    }


def fit_probe(train_pos: Tensor, train_neg: Tensor, seed: int = 0):
    """An L2-regularised logistic-regression probe (standardised inputs) of positive vs negative."""
    x = torch.cat([train_pos, train_neg]).double().numpy()
    y = np.concatenate([np.ones(len(train_pos)), np.zeros(len(train_neg))])
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000, random_state=seed))
    return probe.fit(x, y)


def probe_metrics(
    train_pos: Tensor, train_neg: Tensor, test_pos: Tensor, test_neg: Tensor, seed: int = 0, probe=None
) -> dict[str, float]:
    """Held-out AUROC and accuracy of an L2-regularised logistic-regression probe (`probe`: one
    already fitted on the same train rows by `fit_probe`)."""
    probe = probe if probe is not None else fit_probe(train_pos, train_neg, seed)
    xt = torch.cat([test_pos, test_neg]).double().numpy()
    yt = np.concatenate([np.ones(len(test_pos)), np.zeros(len(test_neg))])
    p = probe.predict_proba(xt)[:, 1]
    return {"auroc": float(roc_auc_score(yt, p)), "accuracy": float(((p > 0.5) == yt).mean())}


def bootstrap_cosine(
    harm_inst: Float[Tensor, "n1 layer d_model"],
    harmless_inst: Float[Tensor, "n2 layer d_model"],
    harm_post: Float[Tensor, "n1 layer d_model"],
    harmless_post: Float[Tensor, "n2 layer d_model"],
    n_resamples: int = 200,
    seed: int = 0,
) -> dict[str, list[float]]:
    """cos(v_harm, v_ref) per layer with a percentile bootstrap 95% CI, resampling prompts."""

    def cos(hi, li, hp, lp):
        a, b = diff_in_means(hi, li), diff_in_means(hp, lp)
        return torch.nn.functional.cosine_similarity(a, b, dim=-1)

    point = cos(harm_inst, harmless_inst, harm_post, harmless_post)
    gen = torch.Generator().manual_seed(seed)
    n1, n2 = harm_inst.shape[0], harmless_inst.shape[0]
    samples = []
    for _ in range(n_resamples):
        i = torch.randint(n1, (n1,), generator=gen)
        j = torch.randint(n2, (n2,), generator=gen)
        samples.append(cos(harm_inst[i], harmless_inst[j], harm_post[i], harmless_post[j]))
    stack = torch.stack(samples)
    lo, hi = torch.quantile(stack, 0.025, dim=0), torch.quantile(stack, 0.975, dim=0)
    return {"cos": point.tolist(), "ci_low": lo.tolist(), "ci_high": hi.tolist()}


def mean_cosine(x: Float[Tensor, "n d_model"], unit: Float[Tensor, " d_model"]) -> float:
    """Mean cosine of held-out activations with a direction."""
    if x.shape[0] == 0:
        raise HarcError("no activations to compare with the direction")
    return float(torch.nn.functional.cosine_similarity(x.double(), unit.double()[None], dim=-1).mean())


@dataclass(frozen=True)
class LinearProbes:
    """Logistic-regression probes for harmfulness, one per (position, layer slot), fitted on the
    directions' training cache (standardised inputs, L2, C = 0.1): `score` gives P(harmful).

    Stored as tensors `[position, layer, d_model]` (`mean`, `scale`, `coef`) and `[position, layer]`
    (`intercept`), float64, so the artifact needs no pickle."""

    positions: tuple[str, ...]
    layers: tuple[int, ...]
    mean: Tensor
    scale: Tensor
    coef: Tensor
    intercept: Tensor

    def score(self, x: Float[Tensor, "n d_model"], slot: int, position: str = "t_inst") -> Tensor:
        """P(harmful) [n] for residuals read at `slot` and `position`."""
        if position not in self.positions:
            raise HarcError(f"no probe at position '{position}'; probes exist at {self.positions}")
        if slot not in self.layers:
            raise HarcError(f"no probe at layer slot {slot}; probes exist at slots {self.layers}")
        i, j = self.positions.index(position), self.layers.index(slot)
        if x.shape[-1] != self.coef.shape[-1]:
            raise HarcError(f"residuals have width {x.shape[-1]}, the probes {self.coef.shape[-1]}")
        z = (x.double() - self.mean[i, j]) / self.scale[i, j]
        return torch.sigmoid(z @ self.coef[i, j] + self.intercept[i, j])

    def tensors(self) -> dict[str, Tensor]:
        """The probes' parameters as named tensors (saved inside directions.safetensors)."""
        return {
            "probe_mean": self.mean,
            "probe_scale": self.scale,
            "probe_coef": self.coef,
            "probe_intercept": self.intercept,
        }

    @classmethod
    def from_tensors(cls, t: dict[str, Tensor], positions, layers) -> LinearProbes:
        return cls(
            tuple(positions),
            tuple(layers),
            t["probe_mean"],
            t["probe_scale"],
            t["probe_coef"],
            t["probe_intercept"],
        )

    @classmethod
    def stack(cls, fitted: dict[str, list], layers) -> LinearProbes:
        """From fitted sklearn pipelines (StandardScaler, LogisticRegression) per position, per layer."""
        positions = tuple(fitted)

        def grab(fn):
            return torch.tensor(np.stack([[fn(p) for p in fitted[pos]] for pos in positions]))

        return cls(
            positions,
            tuple(layers),
            grab(lambda p: p[0].mean_),
            grab(lambda p: p[0].scale_),
            grab(lambda p: p[1].coef_[0]),
            grab(lambda p: p[1].intercept_[0]),
        )
