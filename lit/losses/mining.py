"""Triplet miners for metric learning on a labelled batch.

Every miner takes a ``(B, B)`` distance matrix (or only the labels) and returns index
tensors ``(anchors, positives, negatives)`` as a :class:`Triplets` named tuple. They
are vectorised with boolean masks (no Python loop over the batch), run without
gradient, and never return a triplet whose positive equals its anchor or whose
negative shares the anchor's label.

Why not pytorch-metric-learning: it is not a dependency of ``lit`` (and not installed
here), and the few miners needed fit in a small, dependency-free module whose exact
rules are documented below and checked in ``tests/test_mining.py`` against naive
Python loops over every candidate triplet.

Semi-hard rule used here (``semihard_triplets``): for each positive pair ``(a, p)``,
the candidate negatives are those with ``d(a, p) < d(a, n) < d(a, p) + margin``; the
hardest candidate, i.e. the **closest** one, is kept. A positive pair without any
candidate is skipped (no fallback to hard or easy negatives).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from ._checks import check_labels, check_ndim


class Triplets(NamedTuple):
    """Index triplets into a batch.

    Shape:
        - anchors, positives, negatives: :math:`(T,)` int64.
    """

    anchors: Tensor
    positives: Tensor
    negatives: Tensor

    def __len__(self) -> int:  # number of triplets, not number of fields
        return int(self.anchors.numel())


def _masks(labels: Tensor) -> tuple[Tensor, Tensor]:
    """Positive-pair mask (same label, not the anchor itself) and negative-pair mask."""
    same = labels.unsqueeze(0) == labels.unsqueeze(1)
    eye = torch.eye(labels.shape[0], dtype=torch.bool, device=labels.device)
    return same & ~eye, ~same


def _check_dist(dist: Tensor, labels: Tensor) -> None:
    check_ndim(dist, (2,), "dist", "(B, B)")
    if dist.shape[0] != dist.shape[1]:
        raise ValueError(f"dist must be square (B, B), got {tuple(dist.shape)}")
    check_labels(labels, dist.shape[0])


def _empty(device: torch.device) -> Triplets:
    e = torch.zeros(0, dtype=torch.long, device=device)
    return Triplets(e, e.clone(), e.clone())


def positive_pairs(labels: Tensor) -> tuple[Tensor, Tensor]:
    """All ordered pairs ``(a, p)`` with ``a ≠ p`` and the same label.

    Shape:
        - labels: :math:`(B,)`.
        - Output: two :math:`(P,)` int64 tensors, in row-major order.
    """
    check_labels(labels)
    pos, _ = _masks(labels)
    a, p = pos.nonzero(as_tuple=True)
    return a, p


def negative_pairs(labels: Tensor) -> tuple[Tensor, Tensor]:
    """All ordered pairs ``(a, n)`` with different labels.

    Shape:
        - labels: :math:`(B,)`.
        - Output: two :math:`(Q,)` int64 tensors, in row-major order.
    """
    check_labels(labels)
    _, neg = _masks(labels)
    a, n = neg.nonzero(as_tuple=True)
    return a, n


@torch.no_grad()
def all_triplets(labels: Tensor) -> Triplets:
    """Every valid triplet: ``labels[a] == labels[p]``, ``a ≠ p``, ``labels[n] ≠ labels[a]``.

    Args:
        labels: class id of each batch element.

    Returns:
        The triplets in lexicographic ``(a, p, n)`` order. Memory is :math:`O(B^3)`.

    Shape:
        - labels: :math:`(B,)`.
        - Output: three :math:`(T,)` int64 tensors.
    """
    check_labels(labels)
    pos, neg = _masks(labels)
    a, p, n = (pos.unsqueeze(2) & neg.unsqueeze(1)).nonzero(as_tuple=True)
    return Triplets(a, p, n)


@torch.no_grad()
def batch_hard_triplets(dist: Tensor, labels: Tensor) -> Triplets:
    """One triplet per anchor: its farthest positive and its closest negative.

    Anchors without any positive or without any negative in the batch are skipped.
    Ties are broken towards the lowest index.

    Args:
        dist: pairwise distances within the batch.
        labels: class id of each batch element.

    Returns:
        The triplets, ordered by anchor.

    Shape:
        - dist: :math:`(B, B)`; labels: :math:`(B,)`.
        - Output: three :math:`(T,)` int64 tensors, ``T ≤ B``.
    """
    _check_dist(dist, labels)
    dist = dist.detach()
    pos, neg = _masks(labels)
    far_pos = dist.masked_fill(~pos, float("-inf")).argmax(dim=1)
    near_neg = dist.masked_fill(~neg, float("inf")).argmin(dim=1)
    anchors = (pos.any(dim=1) & neg.any(dim=1)).nonzero(as_tuple=True)[0]
    return Triplets(anchors, far_pos[anchors], near_neg[anchors])


@torch.no_grad()
def semihard_triplets(dist: Tensor, labels: Tensor, margin: float) -> Triplets:
    """For each positive pair, the closest negative inside the semi-hard band.

    For each ordered positive pair ``(a, p)``, the candidates are the negatives ``n``
    with ``d(a, p) < d(a, n) < d(a, p) + margin`` (strict inequalities); the closest
    candidate is kept (lowest index on ties). Pairs without candidates are skipped.

    Args:
        dist: pairwise distances within the batch.
        labels: class id of each batch element.
        margin: width of the semi-hard band (the triplet margin).

    Returns:
        The triplets, ordered by ``(a, p)``.

    Shape:
        - dist: :math:`(B, B)`; labels: :math:`(B,)`.
        - Output: three :math:`(T,)` int64 tensors; memory is :math:`O(P \\cdot B)` for
          ``P`` positive pairs.
    """
    _check_dist(dist, labels)
    dist = dist.detach()
    pos, neg = _masks(labels)
    a, p = pos.nonzero(as_tuple=True)
    if a.numel() == 0:
        return _empty(dist.device)
    d_ap = dist[a, p].unsqueeze(1)  # (P, 1)
    d_an = dist[a]  # (P, B)
    band = neg[a] & (d_an > d_ap) & (d_an < d_ap + margin)
    n = d_an.masked_fill(~band, float("inf")).argmin(dim=1)
    keep = band.any(dim=1)
    return Triplets(a[keep], p[keep], n[keep])


@torch.no_grad()
def distance_weighted_probabilities(
    dist: Tensor,
    labels: Tensor,
    dim: int,
    *,
    cutoff: float = 0.5,
    nonzero_loss_cutoff: float = 1.4,
) -> Tensor:
    """Negative-sampling probabilities of distance-weighted sampling (Wu et al., 2017).

    For unit vectors in ``dim`` dimensions, pairwise distances have density
    ``q(d) ∝ d^(dim−2) · (1 − d²/4)^((dim−3)/2)``. Each anchor samples a negative with
    probability proportional to ``1/q(max(d, cutoff))``, restricted to negatives with
    ``d < nonzero_loss_cutoff`` (farther ones would give no loss). An anchor whose
    negatives are all beyond that cutoff samples uniformly among its negatives; an
    anchor without negatives gets an all-zero row. Weights are computed in log space.

    Args:
        dist: pairwise distances between L2-normalised embeddings.
        labels: class id of each batch element.
        dim: embedding dimension.
        cutoff: distances below it are clamped to it (limits the weight of near pairs).
        nonzero_loss_cutoff: negatives at or beyond this distance are not sampled.

    Returns:
        Row-stochastic matrix ``P[a, n]`` (rows without negatives are zero).

    Shape:
        - dist: :math:`(B, B)`; labels: :math:`(B,)`.
        - Output: :math:`(B, B)`.
    """
    _check_dist(dist, labels)
    if dim < 2:
        raise ValueError(f"dim must be at least 2, got {dim}")
    d = dist.detach().clamp_min(cutoff)
    log_one_minus = (1.0 - 0.25 * d.pow(2)).clamp_min(1e-8).log()
    log_w = (2.0 - dim) * d.log() - 0.5 * (dim - 3.0) * log_one_minus  # log of 1 / q(d)
    _, neg = _masks(labels)
    allowed = neg & (dist.detach() < nonzero_loss_cutoff)
    fallback = neg & ~allowed.any(dim=1, keepdim=True)  # rows with only far negatives
    log_w = torch.where(fallback, torch.zeros_like(log_w), log_w)
    log_w = log_w.masked_fill(~(allowed | fallback), float("-inf"))
    has_neg = neg.any(dim=1, keepdim=True)
    log_w = torch.where(has_neg, log_w, torch.zeros_like(log_w))  # avoid all -inf rows
    probs = torch.softmax(log_w, dim=1)
    return torch.where(has_neg, probs, torch.zeros_like(probs))


@torch.no_grad()
def distance_weighted_triplets(
    dist: Tensor,
    labels: Tensor,
    dim: int,
    *,
    cutoff: float = 0.5,
    nonzero_loss_cutoff: float = 1.4,
    generator: torch.Generator | None = None,
) -> Triplets:
    """One sampled negative for every positive pair (distance-weighted sampling).

    For each ordered positive pair ``(a, p)`` whose anchor has a negative, draws ``n``
    from :func:`distance_weighted_probabilities` row ``a``, independently per pair.

    Args:
        dist: pairwise distances between L2-normalised embeddings.
        labels: class id of each batch element.
        dim: embedding dimension.
        cutoff: see :func:`distance_weighted_probabilities`.
        nonzero_loss_cutoff: see :func:`distance_weighted_probabilities`.
        generator: random generator for reproducible sampling.

    Returns:
        The triplets, ordered by ``(a, p)``.

    Shape:
        - dist: :math:`(B, B)`; labels: :math:`(B,)`.
        - Output: three :math:`(T,)` int64 tensors.
    """
    probs = distance_weighted_probabilities(
        dist, labels, dim, cutoff=cutoff, nonzero_loss_cutoff=nonzero_loss_cutoff
    )
    pos, neg = _masks(labels)
    pos &= neg.any(dim=1, keepdim=True)
    a, p = pos.nonzero(as_tuple=True)
    if a.numel() == 0:
        return _empty(dist.device)
    n = torch.multinomial(probs[a], 1, generator=generator).squeeze(1)
    return Triplets(a, p, n)
