"""Difference in means, accumulated in float64, and per-layer cosines: the arithmetic of directions."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from jaxtyping import Float
from torch import Tensor

from ..errors import HarcError


class MeanAccumulator:
    """Running float64 sum and count: the mean of any number of chunks, whatever their sizes."""

    def __init__(self):
        self.total: Tensor | None = None
        self.count = 0

    def add(self, chunk: Tensor) -> None:
        """Add a chunk of examples [n, …] to the running sum (float64)."""
        part = chunk.double().sum(0)
        self.total = part if self.total is None else self.total + part
        self.count += chunk.shape[0]

    def mean(self) -> Tensor:
        """The mean of everything added so far."""
        if not self.count:
            raise HarcError("cannot take the mean of zero examples")
        return self.total / self.count


def mean_of(chunks: Iterable[Tensor]) -> Tensor:
    """The float64 mean over all examples of a stream of chunks."""
    acc = MeanAccumulator()
    for c in chunks:
        acc.add(c)
    return acc.mean()


def diff_in_means(
    positive: Float[Tensor, "n1 ... d_model"], negative: Float[Tensor, "n2 ... d_model"], chunk: int = 256
) -> Float[Tensor, "... d_model"]:
    """mean(positive) − mean(negative), accumulated in float64 over chunks of `chunk` rows."""
    if positive.shape[1:] != negative.shape[1:]:
        raise HarcError(f"shapes differ: {tuple(positive.shape)} vs {tuple(negative.shape)}")
    pos = mean_of(positive[i : i + chunk] for i in range(0, positive.shape[0], chunk))
    neg = mean_of(negative[i : i + chunk] for i in range(0, negative.shape[0], chunk))
    diff = pos - neg
    if not torch.isfinite(diff).all():
        raise HarcError("difference in means is not finite: the activations contain NaN or inf")
    return diff


def unit_and_norm(v: Float[Tensor, "*rest d_model"]) -> tuple[Tensor, Tensor]:
    """Unit vectors and norms. A zero difference (e.g. at the embedding slot for template tokens,
    which are the same token in every prompt) stays a zero vector with norm 0."""
    norm = v.norm(dim=-1)
    if (norm < 1e-12).all():
        raise HarcError("every difference-in-means vector is zero: the two prompt sets have identical means")
    safe = torch.where(norm < 1e-12, torch.ones_like(norm), norm)
    return (v / safe[..., None]).float(), norm.float()


def cosine_per_layer(
    a: Float[Tensor, "layer d_model"], b: Float[Tensor, "layer d_model"]
) -> Float[Tensor, " layer"]:
    """cos(a[l], b[l]) for every layer slot l (computed in float64)."""
    return torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=-1).float()
