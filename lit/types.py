"""Result types shared across lit: plain ``NamedTuple``s of tensors."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


def _make_checked(cls, iterable):
    """``NamedTuple._make`` that does not rely on ``len`` (overridden below to count
    features), so that ``_replace`` keeps working."""
    result = tuple.__new__(cls, iterable)
    if tuple.__len__(result) != len(cls._fields):
        raise TypeError(f"expected {len(cls._fields)} fields, got {tuple.__len__(result)}")
    return result


class LocalFeatures(NamedTuple):
    """Multi-scale super-features of one image, strongest first.

    Shape:
        - descriptors: :math:`(K, 128)` float32, not L2-normalised.
        - strengths: :math:`(K,)` L2 norm of the super-feature before reduction.
        - scales: :math:`(K,)` the scale each super-feature was extracted at.
        - superfeature_ids: :math:`(K,)` int64 template index ``n`` in ``0..N-1``.
        - positions: :math:`(K, 2)` float32 ``(x, y)`` centroid of the attention map,
          in pixels of the image given to ``extract`` (for plots); may be empty.
    """

    descriptors: Tensor
    strengths: Tensor
    scales: Tensor
    superfeature_ids: Tensor
    positions: Tensor | None = None

    def __len__(self) -> int:  # number of features, not number of fields
        return int(self.descriptors.shape[0])

    def to(self, device: str | torch.device) -> LocalFeatures:
        return LocalFeatures(*(None if t is None else t.to(device) for t in self))


class SuperFeatures(NamedTuple):
    """All N super-features of one image at one scale (nothing dropped).

    Shape:
        - descriptors: :math:`(N, 128)`.
        - strengths: :math:`(N,)`.
        - attention: :math:`(N, h, w)` attention of the last LIT iteration.
        - scale: the scale (a float).
    """

    descriptors: Tensor
    strengths: Tensor
    attention: Tensor
    scale: float = 1.0

    def __len__(self) -> int:
        return int(self.descriptors.shape[0])


class Matches(NamedTuple):
    """Matched super-features between image a and image b.

    Shape:
        - indices_a, indices_b: :math:`(M,)` int64 row indices into each feature set.
        - similarity: :math:`(M,)` cosine similarity of each match, decreasing.
        - scales_a, scales_b: :math:`(M,)` scale of each matched feature.
    """

    indices_a: Tensor
    indices_b: Tensor
    similarity: Tensor
    scales_a: Tensor
    scales_b: Tensor

    def __len__(self) -> int:
        return int(self.indices_a.shape[0])

    @property
    def score(self) -> float:
        """Pair score: sum of the similarities of the matches (0 when none)."""
        return float(self.similarity.sum()) if len(self) else 0.0


LocalFeatures._make = classmethod(_make_checked)

SuperFeatures._make = classmethod(_make_checked)

Matches._make = classmethod(_make_checked)
