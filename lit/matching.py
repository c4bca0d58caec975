"""Pairwise matching of super-features (SPEC section 6).

Two images are compared by matching their super-features: reciprocal (mutual) nearest
neighbours under cosine similarity whose similarity reaches a threshold (FIRe's
:data:`FIRE_THRESHOLD`, 0.9, by default), optionally filtered by a ratio test on L2 distances
and by a background test.

The functional core is :func:`match_superfeatures` on raw descriptor matrices;
:func:`match` accepts the result types of :mod:`lit.types` and returns a
:class:`~lit.types.Matches`; :class:`SuperFeatureMatcher` is a thin ``nn.Module`` wrapper.
A model's own rule (threshold, margin and background bank, carried in its config and
weights) is a :class:`MatchRule`, given by ``model.match_rule()``.

Example::

    feats_a, feats_b = model.extract(img_a), model.extract(img_b)
    m = match(feats_a, feats_b)                  # FIRe's rule: cosine >= 0.9
    m = model.match_rule().match(feats_a, feats_b)  # the model's own rule
    print(len(m), m.score)
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import UsageError
from .types import LocalFeatures, Matches, SuperFeatures

__all__ = [
    "FIRE_THRESHOLD", "MatchRule", "SuperFeatureMatcher", "background_similarity", "match", "match_superfeatures",
]

#: FIRe's cosine threshold of a super-feature match (SPEC section 6): the default of
#: :func:`match` and of a model's match rule (:class:`lit.models.MatchConfig`).
FIRE_THRESHOLD = 0.9


_INT_DTYPES = (torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64)



def _unit_rows(x: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit L2 norm, safely for any finite scale: each row is first divided
    by its largest absolute value (squares of 1e19 overflow float32, those of 1e-15 fall
    under any epsilon); all-zero rows stay zero."""
    peak = x.abs().amax(dim=1, keepdim=True)
    x = torch.where(peak > 0, x / torch.where(peak > 0, peak, torch.ones_like(peak)), x)
    return F.normalize(x, p=2.0, dim=1, eps=1e-12)

def _check_descriptors(x: Tensor, name: str) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 2:
        raise UsageError(f"{name} must have shape (N, D), got {tuple(x.shape)}")
    if x.is_complex() or not (x.is_floating_point() or x.dtype in _INT_DTYPES):
        raise TypeError(f"{name} must hold real numbers, got dtype {x.dtype}")
    if x.numel() and not bool(torch.isfinite(x).all()):
        raise UsageError(f"{name} contains NaN or infinite values")


def _check_background(background: Tensor | None, margin: float | None, dim: int) -> None:
    if background is None:
        if margin is not None:
            raise UsageError("margin needs a background set of descriptors (background=...)")
        return
    _check_descriptors(background, "background")
    if background.shape[0] == 0:
        raise UsageError("background must hold at least one descriptor")
    if background.shape[1] != dim:
        raise UsageError(f"background descriptors have dimension {background.shape[1]}, the images' {dim}")
    if margin is None:
        raise UsageError("background needs a margin (a cosine difference, e.g. 0.05)")
    if isinstance(margin, bool) or not isinstance(margin, (int, float)):
        raise TypeError(f"margin must be a float or None, got {type(margin).__name__}")
    if not -2 <= margin <= 2:  # also rejects NaN
        raise UsageError(f"margin is a difference of cosine similarities (in -2..2), got {margin}")


def background_similarity(desc: Tensor, background: Tensor, chunk: int = 4096) -> Tensor:
    """Largest cosine similarity of each descriptor to a background set.

    Args:
        desc: descriptors (not necessarily normalised).
        background: descriptors of unrelated photos (not necessarily normalised); moved
            to ``desc``'s device.
        chunk: background rows per matrix product (memory bound).

    Returns:
        ``max_m cos(desc_i, background_m)`` for each row ``i`` (``desc``'s float dtype).

    Shape:
        - desc: :math:`(N, D)`; background: :math:`(M, D)`, at least one row.
        - Output: :math:`(N,)`.
    """
    dtype = torch.float64 if desc.dtype == torch.float64 else torch.float32
    a = _unit_rows(desc.to(dtype))
    best = torch.full((a.shape[0],), -math.inf, dtype=dtype, device=a.device)
    for s in range(0, background.shape[0], chunk):
        b = _unit_rows(background[s:s + chunk].to(device=a.device, dtype=dtype))
        best = torch.maximum(best, (a @ b.T).amax(dim=1))
    return best


def _check_options(threshold: float | None, ratio: float | None) -> None:
    if threshold is not None:
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
            raise TypeError(f"threshold must be a float or None, got {type(threshold).__name__}")
        if math.isnan(threshold):
            raise UsageError("threshold must not be NaN")
        if threshold > 1:
            raise UsageError(f"threshold is a cosine similarity (at most 1): {threshold} would match nothing")
        if threshold < 0:
            warnings.warn(f"threshold {threshold} < 0: a negative cosine similarity keeps unrelated super-features "
                          "(every reciprocal pair at -1)", stacklevel=3)
    if ratio is not None:
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)):
            raise TypeError(f"ratio must be a float or None, got {type(ratio).__name__}")
        if not ratio > 0:  # also rejects NaN
            raise UsageError(f"ratio must be > 0, got {ratio}")
        if ratio > 1:
            warnings.warn(f"ratio {ratio} > 1 tests nothing (d1/d2 is at most 1); use a ratio in (0, 1] or None",
                          stacklevel=3)


def _first_argmax(sim: Tensor, dim: int) -> Tensor:
    """Index of the maximum along ``dim``; among exact ties, the lowest index.

    Written out explicitly rather than relying on backend-specific ``argmax`` tie rules.
    """
    best = sim.amax(dim=dim, keepdim=True)
    n = sim.shape[dim]
    shape = [1, 1]
    shape[dim] = n
    idx = torch.arange(n, device=sim.device).view(shape)
    return torch.where(sim == best, idx, n).amin(dim=dim)


def _ratio_pass(sim: Tensor, dim: int, ratio: float) -> Tensor:
    """Whether each row (``dim=1``) or column (``dim=0``) passes ``d1 / d2 <= ratio``.

    ``d = sqrt(max(2 - 2 sim, 0))`` is the L2 distance between unit vectors, ``d1`` the
    nearest and ``d2`` the second nearest distance (ties count: two equally near neighbours
    give ``d1 == d2``). With a single candidate there is no second neighbour and the test
    passes; when ``d1 == d2 == 0`` the ratio is taken as 1 (an exact ambiguity).
    """
    n = sim.shape[dim]
    if n < 2:
        return torch.ones(sim.shape[1 - dim], dtype=torch.bool, device=sim.device)
    top2 = sim.topk(2, dim=dim).values  # largest similarities = smallest distances
    top2 = top2 if dim == 1 else top2.T
    d = torch.sqrt(torch.clamp(2.0 - 2.0 * top2, min=0.0))
    d1, d2 = d[:, 0], d[:, 1]
    r = torch.where(d2 > 0, d1 / torch.where(d2 > 0, d2, torch.ones_like(d2)), torch.ones_like(d1))
    return r <= ratio


def match_superfeatures(
    desc_a: Tensor,
    desc_b: Tensor,
    *,
    threshold: float | None = FIRE_THRESHOLD,
    ratio: float | None = None,
    background: Tensor | None = None,
    margin: float | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Match two descriptor sets by reciprocal nearest neighbours under cosine similarity.

    Steps:

    1. Both sets are L2-normalised (a zero vector stays zero, similarity 0 to everything)
       and the cosine similarity matrix ``S = a @ b.T`` is computed (in float64 for
       float64 inputs, otherwise float32).
    2. Each row ``i`` of ``a`` picks its nearest neighbour ``j = argmax_j S[i, j]`` in
       ``b`` and each row of ``b`` its nearest neighbour in ``a``. **Ties** (exactly equal
       similarities) go to the **lowest index**, so results are deterministic.
    3. ``(i, j)`` is kept when it is reciprocal (each is the other's nearest neighbour) and
       ``S[i, j] >= threshold`` (``threshold=None`` keeps every reciprocal pair).
    4. With ``ratio`` set, a **ratio test in both directions** is applied on L2 distances
       between the normalised vectors, ``d = sqrt(max(2 - 2 S, 0))``: the pair is kept only
       if ``d1 / d2 <= ratio`` both for row ``i`` (``d1``, ``d2``: distances from ``a_i`` to
       its nearest and second-nearest vector of ``b``) and for column ``j`` (from ``b_j``
       to ``a``). A second neighbour at the same distance as the first gives a ratio of 1,
       so exact ties are rejected by any ``ratio < 1``. When the other set has a single
       vector there is no second neighbour and that direction passes.
    5. With ``background`` (descriptors of photos unrelated to both images) and ``margin``,
       a **background test**: the pair is kept only if ``S[i, j]`` exceeds by at least
       ``margin`` the best similarity that either descriptor has to the background,
       ``S[i, j] - max(bg(a_i), bg(b_j)) >= margin`` with ``bg(x) = max_m cos(x, bg_m)``
       (:func:`background_similarity`). A match must then be more similar than anything
       in unrelated photos: super-features that look alike in every photo (sky, foliage,
       the same template) are dropped, distinctive ones are kept at a lower cosine. This is
       the rule of a model with a calibrated background (``lit-effl0``, see its card).
    6. Matches are sorted by decreasing similarity; equal similarities keep increasing
       ``idx_a`` order.

    Args:
        desc_a: descriptors of image a (not necessarily normalised).
        desc_b: descriptors of image b, same dimension ``D``.
        threshold: minimum cosine similarity of a match, or ``None`` for none.
        ratio: maximum ratio ``d1 / d2`` of the ratio test, or ``None`` to skip it.
        background: descriptors of unrelated photos for the background test, or ``None``.
        margin: the background test's margin (needed with ``background``, e.g. 0.05).

    Returns:
        ``(idx_a, idx_b, sim)``: int64 row indices into ``desc_a`` and ``desc_b`` and the
        cosine similarity of each match. Empty (``M = 0``) when either input is empty.

    Raises:
        TypeError: non-tensor inputs or non-real dtypes, or option of the wrong type.
        ValueError: inputs not 2-D, different dimensions ``D``, NaN/inf values,
            ``ratio <= 0``, a NaN threshold or one above 1 (a warning for a ratio above 1
            or a negative threshold, which test nothing), a background without margin (or
            the reverse), of another dimension, or a margin outside -2..2.

    Shape:
        - desc_a: :math:`(N_a, D)`.
        - desc_b: :math:`(N_b, D)`.
        - background: :math:`(M, D)`.
        - Output: three tensors of shape :math:`(M,)`, ``M <= min(N_a, N_b)``.

    Example::

        a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        b = torch.tensor([[0.0, 2.0], [1.0, 0.1]])
        idx_a, idx_b, sim = match_superfeatures(a, b)
        # idx_a = [1, 0], idx_b = [0, 1], sim = [1.0, 0.995]
    """
    _check_descriptors(desc_a, "desc_a")
    _check_descriptors(desc_b, "desc_b")
    if desc_a.shape[1] != desc_b.shape[1]:
        raise UsageError(
            f"descriptor dimensions differ: desc_a is {tuple(desc_a.shape)}, "
            f"desc_b is {tuple(desc_b.shape)}"
        )
    _check_options(threshold, ratio)
    _check_background(background, margin, desc_a.shape[1])

    dtype = torch.float64 if torch.float64 in (desc_a.dtype, desc_b.dtype) else torch.float32
    device = desc_a.device
    a = desc_a.to(dtype)
    b = desc_b.to(device=device, dtype=dtype)
    na, nb = a.shape[0], b.shape[0]
    if na == 0 or nb == 0:
        empty = torch.empty(0, dtype=torch.long, device=device)
        return empty, empty.clone(), torch.empty(0, dtype=dtype, device=device)

    a = _unit_rows(a)
    b = _unit_rows(b)
    sim = a @ b.T  # (Na, Nb)

    nn_ab = _first_argmax(sim, dim=1)  # (Na,) nearest b of each a
    nn_ba = _first_argmax(sim, dim=0)  # (Nb,) nearest a of each b
    idx_a = torch.arange(na, device=device)
    keep = nn_ba[nn_ab] == idx_a
    best = sim[idx_a, nn_ab]
    if threshold is not None:
        keep &= best >= threshold
    if ratio is not None:
        keep &= _ratio_pass(sim, 1, ratio)
        keep &= _ratio_pass(sim, 0, ratio)[nn_ab]
    if background is not None:
        bg_a, bg_b = background_similarity(a, background), background_similarity(b, background)
        keep &= best - torch.maximum(bg_a, bg_b[nn_ab]) >= margin

    idx_a, idx_b, best = idx_a[keep], nn_ab[keep], best[keep]
    order = torch.sort(best.detach(), descending=True, stable=True).indices
    return idx_a[order], idx_b[order], best[order]


def _unpack(feats, name: str) -> tuple[Tensor, Tensor]:
    """Descriptors ``(N, D)`` and per-feature scales ``(N,)`` of any accepted input."""
    if isinstance(feats, LocalFeatures):
        desc = feats.descriptors
        _check_descriptors(desc, f"{name}.descriptors")
        if feats.scales is None:
            scales = torch.ones(desc.shape[0], dtype=torch.float32, device=desc.device)
        else:
            scales = torch.as_tensor(feats.scales, device=desc.device).reshape(-1).float()
            if scales.shape[0] != desc.shape[0]:
                raise UsageError(
                    f"{name}.scales has {scales.shape[0]} entries for {desc.shape[0]} descriptors"
                )
        return desc, scales
    if isinstance(feats, SuperFeatures):
        desc = feats.descriptors
        _check_descriptors(desc, f"{name}.descriptors")
        scales = torch.full((desc.shape[0],), float(feats.scale), device=desc.device)
        return desc, scales
    if isinstance(feats, np.ndarray):
        feats = torch.from_numpy(np.ascontiguousarray(feats))
    if isinstance(feats, Tensor):
        _check_descriptors(feats, name)
        return feats, torch.ones(feats.shape[0], dtype=torch.float32, device=feats.device)
    raise TypeError(
        f"{name} must be LocalFeatures, SuperFeatures, a torch.Tensor or a numpy array, "
        f"got {type(feats).__name__}"
    )


def match(
    feats_a: LocalFeatures | SuperFeatures | Tensor | np.ndarray,
    feats_b: LocalFeatures | SuperFeatures | Tensor | np.ndarray,
    threshold: float | None = FIRE_THRESHOLD,
    ratio: float | None = None,
    background: Tensor | np.ndarray | None = None,
    margin: float | None = None,
) -> Matches:
    """Match the super-features of two images (public API, SPEC section 8).

    Runs :func:`match_superfeatures` on the descriptors and attaches the scale of each
    matched feature: ``LocalFeatures.scales`` for :class:`~lit.types.LocalFeatures`, the
    single ``SuperFeatures.scale`` for :class:`~lit.types.SuperFeatures`, and 1.0 for raw
    descriptor matrices. The two inputs may be of different kinds.

    Args:
        feats_a: features of image a.
        feats_b: features of image b.
        threshold: minimum cosine similarity (default FIRe's 0.9), or ``None``.
        ratio: optional ratio-test bound on ``d1 / d2`` (see :func:`match_superfeatures`).
        background, margin: optional background test (see :func:`match_superfeatures`);
            a model's own rule is ``model.match_rule()`` (:class:`MatchRule`).

    Returns:
        :class:`~lit.types.Matches` sorted by decreasing similarity; ``Matches.score`` is
        the sum of the similarities.

    Raises:
        TypeError: an input of another type.
        ValueError: descriptor dimensions differ, or malformed inputs or options.

    Shape:
        - feats_a descriptors: :math:`(N_a, D)`; feats_b descriptors: :math:`(N_b, D)`.
        - Output fields: :math:`(M,)`.

    Example::

        m = match(model.extract(img_a), model.extract(img_b), ratio=0.9)
        print(m.indices_a, m.indices_b, m.similarity, m.scales_a)
    """
    desc_a, scales_a = _unpack(feats_a, "feats_a")
    desc_b, scales_b = _unpack(feats_b, "feats_b")
    if isinstance(background, np.ndarray):
        background = torch.from_numpy(np.ascontiguousarray(background))
    idx_a, idx_b, sim = match_superfeatures(desc_a, desc_b, threshold=threshold, ratio=ratio,
                                            background=background, margin=margin)
    return Matches(
        indices_a=idx_a,
        indices_b=idx_b,
        similarity=sim,
        scales_a=scales_a.to(idx_a.device)[idx_a],
        scales_b=scales_b.to(idx_b.device)[idx_b],
    )


class SuperFeatureMatcher(nn.Module):
    """Module wrapper around :func:`match` with fixed options.

    Args:
        threshold: minimum cosine similarity of a match (default FIRe's 0.9), or ``None``.
        ratio: ratio-test bound on ``d1 / d2``, or ``None`` (default) to skip it.

    Shape:
        - Input: two feature sets with :math:`(N_a, D)` and :math:`(N_b, D)` descriptors.
        - Output: :class:`~lit.types.Matches` with fields of shape :math:`(M,)`.

    Example::

        matcher = SuperFeatureMatcher(threshold=0.9, ratio=0.9)
        m = matcher(feats_a, feats_b)
    """

    def __init__(self, threshold: float | None = FIRE_THRESHOLD, ratio: float | None = None) -> None:
        super().__init__()
        _check_options(threshold, ratio)
        self.threshold = threshold
        self.ratio = ratio

    def forward(self, feats_a, feats_b) -> Matches:
        return match(feats_a, feats_b, threshold=self.threshold, ratio=self.ratio)

    def extra_repr(self) -> str:
        return f"threshold={self.threshold}, ratio={self.ratio}"


@dataclass(frozen=True)
class MatchRule:
    """How a model decides that two super-features match: the arguments of :func:`match`
    that belong to the model (``model.match_rule()`` gives it, with optional overrides).

    Args:
        threshold: minimum cosine similarity (``None``: no floor).
        margin: margin of the background test (``None``: no background test).
        background: the background super-features of that test, :math:`(M, D)`; given
            exactly when ``margin`` is.

    Example::

        rule = model.match_rule()                  # lit-effl0: background test, margin 0.1
        m = rule.match(feats_a, feats_b)           # = lit.match(..., **rule.kwargs())
    """

    threshold: float | None = FIRE_THRESHOLD
    margin: float | None = None
    background: Tensor | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        _check_options(self.threshold, None)
        if (self.margin is None) != (self.background is None):
            raise UsageError("a match rule's margin and background go together (both or neither)")
        if self.background is not None:
            _check_background(self.background, self.margin, self.background.shape[-1])

    def kwargs(self) -> dict:
        """``threshold``, ``background`` and ``margin`` as keyword arguments of :func:`match`."""
        return {"threshold": self.threshold, "background": self.background, "margin": self.margin}

    def match(self, feats_a, feats_b, ratio: float | None = None) -> Matches:
        """:func:`match` under this rule (and an optional ratio test)."""
        return match(feats_a, feats_b, ratio=ratio, **self.kwargs())

    def describe(self) -> str:
        """One line for the command line: what a match is under this rule."""
        parts = [] if self.threshold is None else [f"cosine >= {self.threshold:g}"]
        if self.background is not None:
            parts.append(f"cosine >= best background cosine + {self.margin:g} "
                         f"({len(self.background)} background super-features)")
        return " and ".join(parts) or "reciprocal nearest neighbours"
