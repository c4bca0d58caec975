"""Result types shared across lit: ``NamedTuple``s of tensors, with short reprs.

``LocalFeatures`` checks that its fields agree in length when it is built. Printing a
result shows its size, not its tensors (``LocalFeatures(300 features, dim 128, scales
0.5-1.414, cpu)``); the tensors are its fields.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from .errors import UsageError


def _make_checked(cls, iterable):
    """``NamedTuple._make`` that does not rely on ``len`` (overridden below to count
    features), so that ``_replace`` keeps working."""
    result = tuple.__new__(cls, iterable)
    if tuple.__len__(result) != len(cls._fields):
        raise TypeError(f"expected {len(cls._fields)} fields, got {tuple.__len__(result)}")
    return result


def _device(t: Tensor | None) -> str:
    return str(t.device) if isinstance(t, Tensor) else "-"


def _range(t: Tensor | None) -> str:
    if not isinstance(t, Tensor) or t.numel() == 0:
        return "-"
    values = sorted({round(float(v), 3) for v in t.detach().unique().cpu()})
    return f"{values[0]:g}" if len(values) == 1 else f"{values[0]:g}-{values[-1]:g}"


class _LocalFeaturesFields(NamedTuple):
    descriptors: Tensor
    strengths: Tensor
    scales: Tensor
    superfeature_ids: Tensor
    positions: Tensor | None = None


class LocalFeatures(_LocalFeaturesFields):
    """Multi-scale super-features of one image, strongest first.

    The descriptors are the output of the model's reduction layer and are **not
    L2-normalised** (as in FIRe); :func:`lit.match` compares them by cosine similarity
    and ASMK normalises its aggregated residuals, so neither needs it done beforehand.

    Shape:
        - descriptors: :math:`(K, 128)` float32, not L2-normalised.
        - strengths: :math:`(K,)` L2 norm of the super-feature before reduction.
        - scales: :math:`(K,)` the scale each super-feature was extracted at.
        - superfeature_ids: :math:`(K,)` int64 template index ``n`` in ``0..N-1``.
        - positions: :math:`(K, 2)` float32 ``(x, y)`` centroid of the attention map,
          in pixels of the image given to ``extract`` (for plots); may be ``None``.

    Raises:
        ValueError: the fields do not have ``K`` rows each (or descriptors are not 2-D).
    """

    __slots__ = ()

    def __new__(cls, descriptors: Tensor, strengths: Tensor, scales: Tensor, superfeature_ids: Tensor,
                positions: Tensor | None = None) -> LocalFeatures:
        if not isinstance(descriptors, Tensor) or descriptors.dim() != 2:
            shape = tuple(descriptors.shape) if hasattr(descriptors, "shape") else type(descriptors).__name__
            raise UsageError(f"LocalFeatures: descriptors must be a (K, D) tensor, got {shape}")
        k = descriptors.shape[0]
        for name, t in (("strengths", strengths), ("scales", scales), ("superfeature_ids", superfeature_ids)):
            if not isinstance(t, Tensor) or t.dim() != 1 or t.shape[0] != k:
                shape = tuple(t.shape) if hasattr(t, "shape") else type(t).__name__
                raise UsageError(f"LocalFeatures: {name} must have shape ({k},) like the descriptors, got {shape}")
        if positions is not None and (not isinstance(positions, Tensor) or tuple(positions.shape) != (k, 2)):
            shape = tuple(positions.shape) if hasattr(positions, "shape") else type(positions).__name__
            raise UsageError(f"LocalFeatures: positions must have shape ({k}, 2) or be None, got {shape}")
        return super().__new__(cls, descriptors, strengths, scales, superfeature_ids, positions)

    def __len__(self) -> int:  # number of features, not number of fields
        return int(self.descriptors.shape[0])

    @property
    def count(self) -> int:
        """Number of features, ``len(feats)`` (replaces the tuple method ``count``)."""
        return len(self)

    def __repr__(self) -> str:
        return (f"LocalFeatures({len(self)} features, dim {self.descriptors.shape[1]}, "
                f"scales {_range(self.scales)}, {_device(self.descriptors)})")

    def to(self, device: str | torch.device) -> LocalFeatures:
        return LocalFeatures(*(None if t is None else t.to(device) for t in self))


class SuperFeatures(NamedTuple):
    """All N super-features of one image at one scale (nothing dropped).

    Shape:
        - descriptors: :math:`(N, 128)`, not L2-normalised.
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

    @property
    def count(self) -> int:
        """Number of super-features, ``len(sf)`` (replaces the tuple method ``count``)."""
        return len(self)

    def __repr__(self) -> str:
        h, w = tuple(self.attention.shape[-2:]) if isinstance(self.attention, Tensor) and self.attention.dim() >= 2 else (0, 0)
        return (f"SuperFeatures({len(self)} super-features, dim {self.descriptors.shape[-1]}, "
                f"attention {h}x{w}, scale {float(self.scale):g}, {_device(self.descriptors)})")


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
    def count(self) -> int:
        """Number of matches, ``len(m)`` (replaces the tuple method ``count``)."""
        return len(self)

    def __repr__(self) -> str:
        if not len(self):
            return "Matches(0 matches)"
        sim = self.similarity.detach().float().cpu()
        return (f"Matches({len(self)} match{'' if len(self) == 1 else 'es'}, similarity "
                f"{float(sim.min()):.3f}-{float(sim.max()):.3f}, score {self.score:.3f})")

    @property
    def score(self) -> float:
        """Pair score: sum of the similarities of the matches (0 when none)."""
        return float(self.similarity.sum()) if len(self) else 0.0


def _make_validated(cls, iterable):
    """``_make`` (and so ``_replace``) through the validating constructor."""
    values = tuple(iterable)
    if len(values) != len(cls._fields):
        raise TypeError(f"expected {len(cls._fields)} fields, got {len(values)}")
    return cls(*values)


LocalFeatures._make = classmethod(_make_validated)

SuperFeatures._make = classmethod(_make_checked)

Matches._make = classmethod(_make_checked)
