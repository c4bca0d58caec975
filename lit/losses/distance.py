"""Euclidean distances with gradients that stay finite at zero distance."""

from __future__ import annotations

import torch
from torch import Tensor


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
