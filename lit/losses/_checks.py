"""Shape checks shared by the loss functions (private)."""

from __future__ import annotations

from torch import Tensor


def check_ndim(x: Tensor, ndims: tuple[int, ...], name: str, layout: str) -> None:
    """Raise ``ValueError`` unless ``x`` is a tensor with one of ``ndims`` dimensions."""
    if not hasattr(x, "dim"):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() not in ndims:
        raise ValueError(f"{name} must have shape {layout}, got {tuple(x.shape)}")


def check_labels(labels: Tensor, batch: int | None = None, name: str = "labels") -> None:
    """Raise ``ValueError`` unless ``labels`` is a 1-D integer tensor (of length ``batch``)."""
    check_ndim(labels, (1,), name, "(B,)")
    if batch is not None and labels.shape[0] != batch:
        raise ValueError(f"{name} has {labels.shape[0]} entries but the batch has {batch}")
    if labels.is_floating_point() or labels.is_complex():
        raise ValueError(f"{name} must be integer (or bool) class ids, got {labels.dtype}")


def check_reduction(reduction: str) -> None:
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
