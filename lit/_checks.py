"""The validation vocabulary of lit's public boundaries (kornia's ``KORNIA_CHECK_*``).

Each check raises :class:`lit.errors.UsageError` (a ``ValueError``) for a bad value and
``TypeError`` for a value of the wrong kind, with a message that names the argument (the
caller passes the name a user knows: ``"descriptors"``, ``"--image-size"``), and returns
the value in the form the caller works with.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .errors import UsageError

__all__ = [
    "as_tensor", "check_choice", "check_finite", "check_ids", "check_int", "check_matrix", "check_number",
]


def as_tensor(x: Any, name: str) -> Tensor:
    """A detached tensor from a tensor, a numpy array or a (nested) list of numbers.

    Raises:
        TypeError: anything else, or an array of objects or strings.
    """
    if isinstance(x, Tensor):
        return x.detach()
    if isinstance(x, (list, tuple)):
        x = np.asarray(x)
    if isinstance(x, np.ndarray):
        if x.dtype == object or x.dtype.kind not in "biuf":
            raise TypeError(f"{name} has unsupported dtype {x.dtype}")
        return torch.from_numpy(np.ascontiguousarray(x))
    raise TypeError(f"{name} must be a numpy array or a torch tensor, got {type(x).__name__}")


def check_finite(x: Tensor, name: str) -> Tensor:
    """``x`` unchanged when every value is finite.

    One fast pass (a finite sum means finite values); only when the sum is not finite are
    the minimum and maximum looked at (the sum may just have overflowed; NaN and infinities
    show in them).

    Raises:
        UsageError: a NaN or an infinite value.
    """
    if (x.numel() and x.is_floating_point() and not bool(torch.isfinite(x.sum()))
            and not bool(torch.isfinite(torch.stack(torch.aminmax(x))).all())):
        raise UsageError(f"{name} contains NaN or infinite values")
    return x


def check_matrix(x: Any, name: str, *, dim: int | None = None, dim_of: str = "", integers: bool = False,
                 finite: bool = True) -> Tensor:
    """The ``(N, D)`` matrix of real numbers every descriptor set is.

    Args:
        x: tensor or numpy array.
        name: what to call it in messages.
        dim: required ``D`` (``None``: any); ``dim_of`` says whose dimension it is
            (``"the codebook"``).
        integers: accept integer dtypes too (returned as they are).
        finite: refuse NaN and infinite values.

    Shape:
        - x: :math:`(N, D)`.

    Raises:
        TypeError: not an array, or not real numbers.
        UsageError: not 2-D, another ``D``, or non-finite values.
    """
    x = as_tensor(x, name)
    if x.is_complex() or x.dtype == torch.bool or not (x.is_floating_point() or integers):
        raise TypeError(f"{name} must hold {'real' if integers else 'floating-point'} numbers, got dtype {x.dtype}")
    if x.dim() != 2:
        raise UsageError(f"{name} must have shape (N, D), got {tuple(x.shape)}")
    if dim is not None and x.shape[1] != dim:
        whose = f" to match {dim_of}" if dim_of else ""
        raise UsageError(f"{name} must be (N, {dim}){whose}, got shape {tuple(x.shape)}")
    return check_finite(x, name) if finite else x


def check_ids(ids: Any, n: int, name: str, *, max_id: int | None = None) -> Tensor:
    """``n`` non-negative integer ids, one per row of something, as int64.

    Raises:
        TypeError: not integers.
        UsageError: not 1-D of length ``n``, negative, or above ``max_id``.
    """
    ids = as_tensor(ids, name)
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise TypeError(f"{name} must be integers, got {ids.dtype}")
    if ids.dim() != 1 or ids.shape[0] != n:
        raise UsageError(f"{name} must be 1-D with one id per row ({n}), got shape {tuple(ids.shape)}")
    ids = ids.to(torch.int64)
    if n:
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or (max_id is not None and hi > max_id):
            raise UsageError(f"{name} must be in 0..{max_id if max_id is not None else 'n'}, got {lo}..{hi}")
    return ids


def check_int(value: Any, name: str, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """An integer within ``[minimum, maximum]`` (``bool`` is not an integer here).

    Raises:
        TypeError: not an integer.
        UsageError: out of range.
    """
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    value = int(value)
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise UsageError(f"{name} must be {_range_text(minimum, maximum)}, got {value}")
    return value


def check_number(value: Any, name: str, *, minimum: float | None = None, maximum: float | None = None,
                 open_minimum: bool = False) -> float:
    """A finite real number within ``[minimum, maximum]`` (``(minimum, maximum]`` with
    ``open_minimum``).

    Raises:
        TypeError: not a number.
        UsageError: not finite, or out of range.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    value = float(value)
    too_low = minimum is not None and (value <= minimum if open_minimum else value < minimum)
    if not math.isfinite(value) or too_low or (maximum is not None and value > maximum):
        low = "" if minimum is None else (f"> {minimum:g}" if open_minimum else f">= {minimum:g}")
        high = "" if maximum is None else f"<= {maximum:g}"
        raise UsageError(f"{name} must be a finite number{' ' if low or high else ''}{' and '.join(p for p in (low, high) if p)}, "
                         f"got {value:g}")
    return value


def check_choice(value: Any, name: str, choices: Iterable[Any]) -> Any:
    """``value`` when it is one of ``choices``.

    Raises:
        UsageError: it is not.
    """
    choices = tuple(choices)
    if value not in choices:
        raise UsageError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


def _range_text(minimum: int | None, maximum: int | None) -> str:
    if minimum is not None and maximum is not None:
        return f"in {minimum}..{maximum}"
    if minimum is not None:
        return f">= {minimum}"
    return f"<= {maximum}"
