"""Euclidean distances with gradients that stay finite at zero distance."""

from __future__ import annotations

import torch
from torch import Tensor

from ._checks import check_ndim


def safe_sqrt(squared: Tensor, eps: float = 1e-12) -> Tensor:
    """Square root whose gradient is 0 (not ``inf``/``nan``) where ``squared <= eps``.

    Args:
        squared: non-negative values (squared distances).
        eps: values at or below it give exactly 0 and a zero gradient.

    Returns:
        ``sqrt(squared)``, elementwise, same shape.
    """
    safe = squared.clamp_min(eps)
    return torch.where(squared > eps, safe.sqrt(), torch.zeros_like(safe))


def pairwise_l2_distance(x: Tensor, y: Tensor | None = None, *, squared: bool = False) -> Tensor:
    """All pairwise Euclidean distances between the rows of ``x`` and ``y``.

    Computed from inner products (``|x|² + |y|² − 2 x·y``, clamped at 0), which keeps
    memory at ``O(M·N)``. When ``y`` is omitted the diagonal is exactly 0 and has a zero
    gradient, so the matrix can be used directly in losses.

    Args:
        x: first set of vectors.
        y: second set; ``x`` itself when ``None``.
        squared: return squared distances.

    Returns:
        The distance matrix.

    Shape:
        - x: :math:`(M, D)`, y: :math:`(N, D)`.
        - Output: :math:`(M, N)`.
    """
    check_ndim(x, (2,), "x", "(M, D)")
    same = y is None
    if same:
        y = x
    else:
        check_ndim(y, (2,), "y", "(N, D)")
        if y.shape[1] != x.shape[1]:
            raise ValueError(f"x and y must have the same width, got {x.shape[1]} and {y.shape[1]}")
    sq = (
        x.pow(2).sum(1, keepdim=True) + y.pow(2).sum(1).unsqueeze(0) - 2.0 * (x @ y.transpose(0, 1))
    )
    sq = sq.clamp_min(0.0)
    if same:
        eye = torch.eye(x.shape[0], dtype=torch.bool, device=x.device)
        sq = sq.masked_fill(eye, 0.0)
    return sq if squared else safe_sqrt(sq)
