"""Rank statistics for the analyses: Spearman's correlation and a bootstrap interval, in plain torch."""

from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor


def average_ranks(x: Tensor) -> Tensor:
    """Ranks ``1..n`` of a 1-D tensor, ties given the mean of the ranks they span.

    Examples:
        >>> average_ranks(torch.tensor([10.0, 30.0, 20.0, 30.0]))
        tensor([1.0000, 3.5000, 2.0000, 3.5000], dtype=torch.float64)
    """
    x = x.double().flatten()
    order = torch.argsort(x, stable=True)
    ranks = torch.empty_like(x)
    ranks[order] = torch.arange(1, len(x) + 1, dtype=torch.float64)
    values, inverse = torch.unique(x, return_inverse=True)
    sums = torch.zeros(len(values), dtype=torch.float64).index_add_(0, inverse, ranks)
    counts = torch.zeros(len(values), dtype=torch.float64).index_add_(0, inverse, torch.ones_like(ranks))
    return (sums / counts)[inverse]


def spearman(x: Tensor, y: Tensor) -> float:
    """Spearman's rank correlation of two equally long 1-D tensors (NaN if either is constant or n < 2).

    Examples:
        >>> spearman(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([10.0, 30.0, 20.0]))
        0.5
    """
    if x.numel() != y.numel():
        raise ValueError(f"spearman needs two samples of equal size, got {x.numel()} and {y.numel()}")
    if x.numel() < 2:
        return float("nan")
    rx, ry = average_ranks(x), average_ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denom = (rx.square().sum() * ry.square().sum()).sqrt()
    return float((rx * ry).sum() / denom) if denom > 0 else float("nan")


def bootstrap_spearman(x: Tensor, y: Tensor, *, n_boot: int = 1000, level: float = 0.95,
                       seed: int = 0) -> Tuple[float, float, float]:
    """Spearman's correlation and a percentile bootstrap interval (resampling the pairs).

    Args:
        x: 1-D sample.
        y: 1-D sample paired with ``x``.
        n_boot: bootstrap resamples.
        level: coverage of the interval.
        seed: seed of the resampling.

    Returns:
        ``(rho, low, high)``; resamples where a side is constant are skipped.
    """
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    rho = spearman(x, y)
    g = torch.Generator().manual_seed(seed)
    n = x.numel()
    draws = []
    for _ in range(n_boot):
        idx = torch.randint(0, n, (n,), generator=g)
        r = spearman(x[idx], y[idx])
        if r == r:
            draws.append(r)
    if not draws:
        return rho, float("nan"), float("nan")
    t = torch.tensor(draws, dtype=torch.float64)
    lo, hi = torch.quantile(t, torch.tensor([(1 - level) / 2, 1 - (1 - level) / 2], dtype=torch.float64))
    return rho, float(lo), float(hi)
