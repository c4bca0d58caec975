"""Geometric verification of super-feature matches: the functional core of re-ranking.

Super-feature matches carry the attention centroid of each matched super-feature in both
images (``positions``, pixels) and the image scale it was extracted at. A pair of photos of
the same place has many matches whose centroids agree with one transformation of the
image plane; an unrelated pair has few matches, scattered. :func:`ransac` finds, for a
batch of candidate pairs at once (the candidates of one query), the transformation that
most matches agree with:

- ``"similarity"``: rotation, uniform scale and translation (4 degrees of freedom), from
  two matches per hypothesis;
- ``"affine"``: 6 degrees of freedom, from three matches.

Hypotheses are every minimal sample of a pair when it has at most as many as asked for
(the best transformation there is, no luck in it), else drawn with a seeded generator on the
CPU (the same on every device; one draw for all pairs, so that a pair's result does not
depend on the other pairs of the batch); they are scored
all at once (``B x H`` hypotheses against ``M`` matches, padded), the best one per pair is
refined by least squares on its inliers. A match is an inlier when the transformed query
centroid lands within ``threshold`` pixels of the candidate's centroid and, with
``scale_tolerance``, when the transformation's scale agrees with the ratio of the two
super-features' image scales (a super-feature found at image scale ``s_q`` in the query and
``s_c`` in the candidate implies that the candidate shows the place ``s_q / s_c`` times as
large) within that factor.

:func:`match_many` matches one query against many candidates under a model's
:class:`~lit.matching.MatchRule` in one batched product, with the same result as
``rule.match`` pair by pair.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import UsageError
from ..matching import MatchRule, background_similarity
from ..types import LocalFeatures

__all__ = ["MODELS", "PaddedMatches", "Verification", "match_many", "ransac", "transform_points"]

#: Transformation models and the matches one hypothesis is made from.
MODELS = {"similarity": 2, "affine": 3}


class Verification(NamedTuple):
    """Result of :func:`ransac` for a batch of pairs.

    Shape:
        - inliers: :math:`(B, M)` bool, which (valid) matches agree with ``transform``.
        - transform: :math:`(B, 2, 3)` ``[A | t]`` mapping query pixels to candidate pixels
          (``y = A x + t``); the identity where no hypothesis could be made.
        - num_inliers: :math:`(B,)` int64.
    """

    inliers: Tensor
    transform: Tensor
    num_inliers: Tensor


class PaddedMatches(NamedTuple):
    """Matches of one query with ``B`` candidates, padded to ``M`` per candidate.

    Shape:
        - query_idx, cand_idx: :math:`(B, M)` int64 rows of the query's and the candidate's
          features (0 where padded).
        - similarity: :math:`(B, M)` cosine similarity (0 where padded).
        - valid: :math:`(B, M)` bool, false where padded.
    """

    query_idx: Tensor
    cand_idx: Tensor
    similarity: Tensor
    valid: Tensor


def transform_points(transform: Tensor, points: Tensor) -> Tensor:
    """``A x + t`` for ``transform = [A | t]``.

    Shape:
        - transform: :math:`(..., 2, 3)`; points: :math:`(..., M, 2)`; output :math:`(..., M, 2)`.
    """
    return points @ transform[..., :2].transpose(-1, -2) + transform[..., None, :, 2]


def _similarity_from_pairs(src: Tensor, dst: Tensor) -> tuple[Tensor, Tensor]:
    """Similarity mapping two source points onto two destination points.

    src, dst: (..., 2, 2). Returns ``(transform (..., 2, 3), ok (...))``; ``ok`` is false for
    coincident source points.
    """
    ds = src[..., 1, :] - src[..., 0, :]
    dd = dst[..., 1, :] - dst[..., 0, :]
    den = (ds * ds).sum(-1)
    ok = den > 1e-6
    den = torch.where(ok, den, torch.ones_like(den))
    # a = dd / ds as complex numbers: p + i q
    p = (dd[..., 0] * ds[..., 0] + dd[..., 1] * ds[..., 1]) / den
    q = (dd[..., 1] * ds[..., 0] - dd[..., 0] * ds[..., 1]) / den
    a = torch.stack([torch.stack([p, -q], -1), torch.stack([q, p], -1)], -2)
    t = dst[..., 0, :] - (a @ src[..., 0, :, None])[..., 0]
    return torch.cat([a, t[..., None]], -1), ok


def _affine_from_triples(src: Tensor, dst: Tensor) -> tuple[Tensor, Tensor]:
    """Affine map of three source points onto three destination points (src, dst: (..., 3, 2));
    ``ok`` is false for (nearly) collinear source points (a triangle under 1 pixel squared)."""
    s = torch.stack([src[..., 1, :] - src[..., 0, :], src[..., 2, :] - src[..., 0, :]], -1)  # columns
    d = torch.stack([dst[..., 1, :] - dst[..., 0, :], dst[..., 2, :] - dst[..., 0, :]], -1)
    det = s[..., 0, 0] * s[..., 1, 1] - s[..., 0, 1] * s[..., 1, 0]
    ok = det.abs() > 2.0
    det = torch.where(ok, det, torch.ones_like(det))
    inv = torch.stack([torch.stack([s[..., 1, 1], -s[..., 0, 1]], -1),
                       torch.stack([-s[..., 1, 0], s[..., 0, 0]], -1)], -2) / det[..., None, None]
    a = d @ inv
    t = dst[..., 0, :] - (a @ src[..., 0, :, None])[..., 0]
    return torch.cat([a, t[..., None]], -1), ok


def _fit_least_squares(src: Tensor, dst: Tensor, weight: Tensor, model: str) -> tuple[Tensor, Tensor]:
    """Weighted least-squares transformation per batch row (src, dst: (B, M, 2); weight (B, M))."""
    w = weight.to(src.dtype)
    n = w.sum(-1)
    ok = n >= MODELS[model]
    n1 = torch.where(ok, n, torch.ones_like(n))
    ms = (w[..., None] * src).sum(1) / n1[:, None]
    md = (w[..., None] * dst).sum(1) / n1[:, None]
    s, d = src - ms[:, None], dst - md[:, None]
    if model == "similarity":
        den = (w * (s * s).sum(-1)).sum(-1)
        ok = ok & (den > 1e-6)
        den = torch.where(ok, den, torch.ones_like(den))
        p = (w * (d[..., 0] * s[..., 0] + d[..., 1] * s[..., 1])).sum(-1) / den
        q = (w * (d[..., 1] * s[..., 0] - d[..., 0] * s[..., 1])).sum(-1) / den
        a = torch.stack([torch.stack([p, -q], -1), torch.stack([q, p], -1)], -2)
    else:
        sw = s * w[..., None]
        cov = sw.transpose(1, 2) @ s  # (B, 2, 2)
        det = torch.linalg.det(cov)
        ok = ok & (det.abs() > 1e-6 * (n1 ** 2))
        eye = torch.eye(2, dtype=src.dtype, device=src.device).expand_as(cov)
        cov = torch.where(ok[:, None, None], cov, eye)
        a = torch.linalg.solve(cov, sw.transpose(1, 2) @ d).transpose(1, 2)
    t = md - (a @ ms[..., None])[..., 0]
    return torch.cat([a, t[..., None]], -1), ok


def _transform_scale(transform: Tensor) -> Tensor:
    return torch.sqrt(torch.linalg.det(transform[..., :2]).abs().clamp_min(1e-12))


def _agree(transform: Tensor, src: Tensor, dst: Tensor, valid: Tensor, threshold: float,
           log_ratio: Tensor | None, log_tol: float | None) -> Tensor:
    """Inlier mask of matches under each transformation: transform (B, H, 2, 3), points
    (B, M, 2) -> (B, H, M)."""
    t = transform[..., None]  # (B, H, 2, 3, 1): coefficients broadcast over the matches
    x, y = src[:, None, :, 0], src[:, None, :, 1]  # (B, 1, M)
    ex = t[:, :, 0, 0] * x + t[:, :, 0, 1] * y + t[:, :, 0, 2] - dst[:, None, :, 0]
    ey = t[:, :, 1, 0] * x + t[:, :, 1, 1] * y + t[:, :, 1, 2] - dst[:, None, :, 1]
    ok = (ex * ex + ey * ey <= threshold * threshold) & valid[:, None]
    if log_ratio is not None and log_tol is not None:
        log_s = torch.log(_transform_scale(transform))  # (B, H)
        ok = ok & ((log_s[..., None] - log_ratio[:, None]).abs() <= log_tol)
    return ok


def _first_max(x: Tensor, dim: int) -> Tensor:
    """Index of the maximum along ``dim``, the lowest among ties on every device
    (``torch.argmax`` returns the first of tied maxima, as documented; 5-7 times faster on a
    CPU than a mask of the maxima and their lowest index)."""
    return x.argmax(dim=dim)


#: Similarities computed at once by :func:`match_many` (a chunk of candidates): the products of
#: 2048 local tokens with 2048 are matched one candidate at a time, in cache, rather than in
#: one tensor of gigabytes.
_CHUNK_ELEMENTS = 1 << 22
#: (pairs x hypotheses x matches) tested at once by :func:`ransac`.
_RANSAC_CHUNK = 1 << 20


def _mutual_nearest(q: Tensor, cand: Tensor, cmask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Nearest candidate row of each query row, its similarity, and whether the query row is
    that row's nearest in turn (ties: the lowest index, as ``argmax``), for unit ``q``
    :math:`(K_q, d)` and padded ``cand`` :math:`(B, K_c, d)` (``cmask``: real rows).

    The column maxima come from ``amax`` (several times faster than a column ``argmax`` on a
    CPU); only the columns that some query row reaches are searched for their first maximum.
    """
    b, kc = cand.shape[:2]
    step = max(1, _CHUNK_ELEMENTS // max(1, len(q) * kc))
    nn_q, s, recip = [], [], []
    buf = torch.empty(min(step, b), len(q), kc, device=q.device)  # reused: no fresh pages for every chunk
    for lo in range(0, b, step):
        sim = torch.matmul(q, cand[lo: lo + step].transpose(1, 2), out=buf[: min(step, b - lo)])  # (b', Kq, Kc)
        pad = ~cmask[lo: lo + step]
        if pad.any():
            sim.masked_fill_(pad[:, None, :], -math.inf)
        sq, nq = sim.max(dim=2)  # the first of tied maxima, as argmax
        top = sim.amax(dim=1)  # (b', Kc): best similarity of each candidate row
        rec = (sq >= torch.gather(top, 1, nq)) & torch.gather(~pad, 1, nq)  # a maximum of its (real) column,
        # maybe tied with a lower row
        bi, qi = rec.nonzero(as_tuple=True)
        if len(bi):
            first = sim[bi, :, nq[bi, qi]].argmax(dim=1)  # each reached column's first maximum
            rec[bi, qi] = first == qi
        nn_q.append(nq)
        s.append(sq)
        recip.append(rec)
    return torch.cat(nn_q), torch.cat(s), torch.cat(recip)


@functools.lru_cache(maxsize=8)
def _colex_subsets(k: int, count: int) -> Tensor:
    """The first ``count`` ``k``-subsets of ``0, 1, 2, ...`` in colexicographic order: for
    every ``c``, the first ``C(c, k)`` of them are exactly the subsets of ``range(c)``."""
    c = k
    while math.comb(c, k) < count:
        c += 1
    subsets = sorted(itertools.combinations(range(c), k), key=lambda t: t[::-1])
    return torch.tensor(subsets[:count], dtype=torch.int64).reshape(-1, k)


def _minimal_samples(counts: Tensor, hypotheses: int, k: int, seed: int) -> Tensor:
    """Positions among each pair's valid matches of the ``k`` matches of each hypothesis,
    ``(B, H, k)``.

    A pair with at most ``hypotheses`` minimal samples (``C(count, k)``) gets every one of
    them (repeated to fill): its result is the best transformation there is, with no luck in
    it. The others get a seeded random draw, one for every pair, so that a pair's hypotheses
    depend on the seed and its own matches only, not on the other pairs of the batch (a
    candidate verifies alike in any short list).
    """
    gen = torch.Generator().manual_seed(int(seed))
    u = torch.rand(hypotheses, k, generator=gen, dtype=torch.float64)
    pick = (u[None] * counts[:, None, None].clamp_min(1)).long()
    # distinct indices within a sample: shift duplicates (a pair with fewer than k matches stays degenerate)
    if k >= 2:
        pick[..., 1] = torch.where(pick[..., 1] == pick[..., 0], (pick[..., 1] + 1) % counts[:, None].clamp_min(1),
                                   pick[..., 1])
    if k == 3:
        for _ in range(2):
            clash = (pick[..., 2] == pick[..., 0]) | (pick[..., 2] == pick[..., 1])
            pick[..., 2] = torch.where(clash, (pick[..., 2] + 1) % counts[:, None].clamp_min(1), pick[..., 2])
    n_samples = torch.ones_like(counts)
    for i in range(k):  # C(count, k), exact in integers
        n_samples = n_samples * (counts - i) // (i + 1)
    every = (counts >= k) & (n_samples <= hypotheses)
    if every.any():
        subsets = _colex_subsets(k, hypotheses)
        pick[every] = subsets[torch.arange(hypotheses)[None] % n_samples[every, None]]
    return pick


def ransac(
    src: Tensor,
    dst: Tensor,
    valid: Tensor | None = None,
    *,
    model: str = "similarity",
    threshold: float = 32.0,
    hypotheses: int = 256,
    seed: int = 0,
    scale_ratio: Tensor | None = None,
    scale_tolerance: float | None = None,
    refine: int = 2,
) -> Verification:
    """The transformation most matches agree with, for each of ``B`` pairs at once.

    Args:
        src: query points of the matches (pixels), padded to ``M`` per pair.
        dst: candidate points of the same matches.
        valid: which entries are real matches (default: all).
        model: ``"similarity"`` or ``"affine"`` (:data:`MODELS`).
        threshold: largest distance (pixels of the candidate) between a transformed query
            point and its match for an inlier.
        hypotheses: hypotheses per pair (minimal samples of 2 or 3 matches); when a pair has
            few matches, every minimal sample is tried instead of a random draw.
        seed: seed of the hypotheses (drawn on the CPU: the same result on every device).
        scale_ratio: expected scale of the transformation from each match (``s_q / s_c``,
            the ratio of the image scales the two super-features were found at), or ``None``.
        scale_tolerance: largest factor between the transformation's scale and
            ``scale_ratio`` for an inlier (e.g. 2.0), or ``None`` for no scale test.
        refine: rounds of least-squares refitting on the inliers (kept when they do not
            lose inliers).

    Returns:
        :class:`Verification`.

    Shape:
        - src, dst: :math:`(B, M, 2)`; valid, scale_ratio: :math:`(B, M)`.
    """
    if model not in MODELS:
        raise UsageError(f"model must be one of {sorted(MODELS)}, got {model!r}")
    if src.dim() != 3 or src.shape[-1] != 2 or dst.shape != src.shape:
        raise UsageError(f"src and dst must both have shape (B, M, 2), got {tuple(src.shape)} and {tuple(dst.shape)}")
    if not threshold > 0 or hypotheses < 1:
        raise UsageError(f"threshold must be > 0 and hypotheses >= 1, got {threshold} and {hypotheses}")
    if scale_tolerance is not None and not scale_tolerance >= 1:
        raise UsageError(f"scale_tolerance is a factor >= 1 (or None), got {scale_tolerance}")
    device, b, m = src.device, src.shape[0], src.shape[1]
    if b > 1 and b * hypotheses * m > _RANSAC_CHUNK:
        return _ransac_in_chunks(src, dst, valid, scale_ratio, model=model, threshold=threshold,
                                 hypotheses=hypotheses, seed=seed, scale_tolerance=scale_tolerance, refine=refine)
    dtype = torch.float64 if src.dtype == torch.float64 else torch.float32
    src, dst = src.to(dtype), dst.to(device=device, dtype=dtype)
    valid = torch.ones(b, m, dtype=torch.bool, device=device) if valid is None else valid.to(device).bool()
    k = MODELS[model]
    eye = torch.eye(2, 3, dtype=dtype, device=device).expand(b, 2, 3).clone()
    if b == 0 or m < k:
        return Verification(torch.zeros(b, m, dtype=torch.bool, device=device), eye,
                            torch.zeros(b, dtype=torch.int64, device=device))
    log_ratio = None if scale_ratio is None else torch.log(scale_ratio.to(device=device, dtype=dtype).clamp_min(1e-12))
    log_tol = None if scale_tolerance is None else math.log(scale_tolerance)

    # hypotheses: sample indices among each pair's valid matches (valid ones come first)
    order = torch.sort((~valid).to(torch.int8), dim=1, stable=True).indices  # valid first
    counts = valid.sum(1)
    pick = _minimal_samples(counts.cpu(), hypotheses, k, seed).to(device)  # (B, H, k)
    idx = torch.gather(order[:, None, :].expand(b, hypotheses, m), 2, pick.reshape(b, hypotheses, k))
    s_pts = torch.gather(src[:, None].expand(b, hypotheses, m, 2), 2, idx[..., None].expand(b, hypotheses, k, 2))
    d_pts = torch.gather(dst[:, None].expand(b, hypotheses, m, 2), 2, idx[..., None].expand(b, hypotheses, k, 2))
    fit = _similarity_from_pairs if model == "similarity" else _affine_from_triples
    transform, ok = fit(s_pts, d_pts)
    distinct = idx[..., 0] != idx[..., 1]
    if k == 3:
        distinct = distinct & (idx[..., 2] != idx[..., 0]) & (idx[..., 2] != idx[..., 1])
    ok = ok & distinct & (counts[:, None] >= k)
    agree = _agree(transform, src, dst, valid, threshold, log_ratio, log_tol) & ok[..., None]
    count = agree.sum(-1)  # (B, H)
    best = _first_max(count, 1)
    rows = torch.arange(b, device=device)
    best_t, inl = transform[rows, best], agree[rows, best]
    n_best = inl.sum(-1)
    for _ in range(refine):
        t_ref, ok_ref = _fit_least_squares(src, dst, inl, model)
        inl_ref = _agree(t_ref[:, None], src, dst, valid, threshold, log_ratio, log_tol)[:, 0] & ok_ref[:, None]
        better = inl_ref.sum(-1) >= n_best
        best_t = torch.where(better[:, None, None], t_ref, best_t)
        inl = torch.where(better[:, None], inl_ref, inl)
        n_best = inl.sum(-1)
    found = n_best >= k
    best_t = torch.where(found[:, None, None], best_t, eye)
    inl = inl & found[:, None]
    return Verification(inl, best_t, inl.sum(-1).long())


def _ransac_in_chunks(src: Tensor, dst: Tensor, valid: Tensor | None, scale_ratio: Tensor | None, **kw
                      ) -> Verification:
    """:func:`ransac` over chunks of pairs (they are independent): pairs with about as many
    matches together, each chunk cut after its last valid match, so that the (pairs x
    hypotheses x matches) tests stay in cache and a pair with few matches is not tested
    against the padding of the one with most."""
    b, m = src.shape[:2]
    if valid is None:
        valid = torch.ones(b, m, dtype=torch.bool, device=src.device)
    valid = valid.to(src.device).bool()
    last = (valid * torch.arange(1, m + 1, device=src.device)).amax(1)  # columns each pair needs
    order = torch.sort(last, descending=True, stable=True).indices.tolist()
    inliers = torch.zeros(b, m, dtype=torch.bool, device=src.device)
    transform = src.new_zeros(b, 2, 3, dtype=torch.float64 if src.dtype == torch.float64 else torch.float32)
    count = torch.zeros(b, dtype=torch.int64, device=src.device)
    lo = 0
    while lo < b:
        width = max(int(last[order[lo]]), 1)
        hi = min(b, lo + max(1, _RANSAC_CHUNK // (kw["hypotheses"] * width)))
        rows = torch.tensor(order[lo:hi], device=src.device)
        v = ransac(src[rows, :width], dst[rows, :width], valid[rows, :width],
                   scale_ratio=None if scale_ratio is None else scale_ratio[rows, :width], **kw)
        inliers[rows, :width], transform[rows], count[rows] = v.inliers, v.transform, v.num_inliers
        lo = hi
    return Verification(inliers, transform, count)


def match_many(query: LocalFeatures, candidates: list[LocalFeatures], rule: MatchRule, *,
               query_background: Tensor | None = None,
               candidate_background: Callable[[int, Tensor], Tensor] | None = None) -> PaddedMatches:
    """Match one query with many candidates under ``rule`` in one batched product.

    The same matches as ``rule.match(query, candidate)`` for each candidate (reciprocal
    nearest neighbours under cosine similarity, ties to the lowest index, the rule's
    threshold and background test), sorted the same way.

    Args:
        query, candidates: features (descriptors on any device; the query's device is used).
        rule: the match rule (``model.match_rule()``).
        query_background: each query descriptor's best cosine to the rule's background
            (:func:`lit.matching.background_similarity`), when known already.
        candidate_background: ``f(i, rows)`` giving that of rows ``rows`` of candidate ``i``
            (it depends on the image alone: a re-ranker caches it); only the rows that
            pass every other test are asked for.

    Returns:
        :class:`PaddedMatches` with ``B = len(candidates)``.
    """
    device = query.descriptors.device
    b = len(candidates)
    q = F.normalize(query.descriptors.float(), dim=1, eps=1e-12)
    sizes = [len(c) for c in candidates]
    kmax = max(sizes, default=0)
    cand = torch.zeros(b, kmax, q.shape[1], device=device)
    cmask = torch.zeros(b, kmax, dtype=torch.bool, device=device)
    for i, c in enumerate(candidates):
        cand[i, : sizes[i]] = F.normalize(c.descriptors.to(device).float(), dim=1, eps=1e-12)
        cmask[i, : sizes[i]] = True
    empty = torch.zeros(b, 0, dtype=torch.int64, device=device)
    if b == 0 or kmax == 0 or len(q) == 0:
        return PaddedMatches(empty, empty, empty.float(), empty.bool())
    nn_q, s, recip = _mutual_nearest(q, cand, cmask)
    neg = torch.tensor(-math.inf, device=device)
    keep = recip
    if rule.threshold is not None:
        keep = keep & (s >= rule.threshold)
    if rule.background is not None:
        bg_q = background_similarity(q, rule.background) if query_background is None else query_background.to(device)
        keep = keep & (s - bg_q[None] >= rule.margin)  # the query side of the test first: fewer rows below
        bg = torch.full((b, len(q)), -math.inf, device=device)
        for i in range(b):
            rows = keep[i].nonzero()[:, 0]
            if len(rows):
                crow = nn_q[i, rows]
                bg[i, rows] = (background_similarity(cand[i, crow], rule.background) if candidate_background is None
                               else candidate_background(i, crow).to(device))
        keep = keep & (s - bg >= rule.margin)
    # sort each row: kept first, by decreasing similarity, ties by increasing query index
    key = torch.where(keep, s, neg)
    order = torch.sort(key, dim=1, descending=True, stable=True).indices
    m = int(keep.sum(1).max().item()) if keep.any() else 0
    order = order[:, :m]
    return PaddedMatches(order, torch.gather(nn_q, 1, order), torch.where(torch.gather(keep, 1, order),
                         torch.gather(s, 1, order), torch.zeros((), device=device)), torch.gather(keep, 1, order))
