"""Running statistics of rows seen batch after batch (Chan et al.'s parallel update, in fp64): the
per-feature mean and standard deviation of the hypernetwork editors and UltraEdit (``RunningNorm``) and
the full covariance StableEdit whitens its value gradients with (``RunningCovariance``).

Both keep (count, mean, m2), m2 being the sum of squared deviations from the mean (per feature, or
their outer products); ``merge`` folds in another set of statistics as if its rows had been seen here.
"""

from __future__ import annotations

import torch
from torch import nn

EPS = torch.finfo(torch.float32).eps


def _merged_mean(count: torch.Tensor, mean: torch.Tensor, n, other_mean: torch.Tensor):
    """(count + n, the new mean, the difference of the two means, count * n / (count + n))."""
    total = count + n
    delta = other_mean - mean
    return total, mean + delta * (n / total), delta, count * n / total


class RunningNorm(nn.Module):
    """Running per-feature mean and standard deviation (Chan et al.'s parallel Welford update), in fp64.

    Before two rows have been seen it is the identity.
    """

    def __init__(self, size: int):
        super().__init__()
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))
        self.register_buffer("mean", torch.zeros(size, dtype=torch.float64))
        self.register_buffer("m2", torch.zeros(size, dtype=torch.float64))  # sum of squared deviations

    @torch.no_grad()
    def reset(self) -> None:
        """Forget every row seen (the identity again)."""
        for buffer in (self.count, self.mean, self.m2):
            buffer.zero_()

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        """Fold the rows of ``x`` (rows, size) into the statistics."""
        n = x.shape[0]
        if n == 0:
            return
        x = x.detach().double()
        batch_mean = x.mean(0)
        total = self.count + n
        delta = batch_mean - self.mean
        self.mean += delta * (n / total)
        self.m2 += (x - batch_mean).pow(2).sum(0) + delta.pow(2) * (self.count * n / total)
        self.count.copy_(total)

    @torch.no_grad()
    def merge(self, other: RunningNorm) -> None:
        """Fold in ``other``'s statistics (as if its rows had been ``update``d here)."""
        if other.count == 0:
            return
        total, mean, delta, weight = _merged_mean(self.count, self.mean, other.count, other.mean)
        self.m2 += other.m2 + delta.pow(2) * weight
        self.mean.copy_(mean)
        self.count.copy_(total)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.count < 2:
            return x
        std = (self.m2 / (self.count - 1)).sqrt()
        return (x - self.mean.to(x.dtype)) / (std.to(x.dtype) + EPS)


class RunningCovariance(nn.Module):
    """Running mean and full covariance of rows, in fp64: ``m2`` is the sum of the outer products of the
    rows' deviations from the mean, so the covariance is ``m2 / (count - ddof)``."""

    def __init__(self, size: int):
        super().__init__()
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))
        self.register_buffer("mean", torch.zeros(size, dtype=torch.float64))
        self.register_buffer("m2", torch.zeros(size, size, dtype=torch.float64))

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        """Fold the rows of ``x`` (rows, size) into the statistics."""
        if x.shape[0] == 0:
            return
        x = x.detach().double()
        batch_mean = x.mean(0)
        centred = x - batch_mean
        total, mean, delta, weight = _merged_mean(self.count, self.mean, x.shape[0], batch_mean)
        self.m2 += centred.T @ centred + torch.outer(delta, delta) * weight
        self.mean.copy_(mean)
        self.count.copy_(total)

    @torch.no_grad()
    def merge(self, other: RunningCovariance) -> None:
        """Fold in ``other``'s statistics (as if its rows had been ``update``d here)."""
        if other.count == 0:
            return
        total, mean, delta, weight = _merged_mean(self.count, self.mean, other.count, other.mean)
        self.m2 += other.m2 + torch.outer(delta, delta) * weight
        self.mean.copy_(mean)
        self.count.copy_(total)

    @torch.no_grad()
    def inverse_sqrt(self, ddof: float, floor: float) -> torch.Tensor:
        """C^-1/2 of C = m2 / (count - ddof), its eigenvalues clamped to at least ``floor`` (fp64)."""
        if self.count <= ddof:
            raise ValueError(f"{int(self.count)} rows seen: the covariance needs more than {ddof}")
        eigenvalues, eigenvectors = torch.linalg.eigh(self.m2 / (self.count - ddof))
        return (eigenvectors * eigenvalues.clamp(min=floor).rsqrt()) @ eigenvectors.T


__all__ = ["EPS", "RunningCovariance", "RunningNorm"]
