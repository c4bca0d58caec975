"""Shape check shared by the loss functions (private)."""

from __future__ import annotations

from torch import Tensor

from ..errors import UsageError


def check_ndim(x: Tensor, ndims: tuple[int, ...], name: str, layout: str) -> None:
    """Raise :class:`~lit.errors.UsageError` unless ``x`` is a tensor with one of ``ndims``
    dimensions (``TypeError`` when it is not a tensor)."""
    if not hasattr(x, "dim"):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() not in ndims:
        raise UsageError(f"{name} must have shape {layout}, got {tuple(x.shape)}")
