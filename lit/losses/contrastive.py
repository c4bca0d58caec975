"""Contrastive losses on global descriptors.

Two forms of the same pair loss, with ``d`` the Euclidean distance of a pair:
positive pair ``½·d²``, negative pair ``½·max(0, margin − d)²``.

- :func:`contrastive_loss`: tuple form (as in cirtorch's training tuples): one anchor
  (query) against a list of other images flagged positive or negative. Summed by
  default, like cirtorch.
- :func:`pairwise_contrastive_loss`: batch form for metric learning: every unordered
  pair of a labelled batch. Averaged over pairs by default.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._checks import check_labels, check_ndim, check_reduction
from .distance import pairwise_l2_distance, safe_sqrt


def _pair_terms(dist: Tensor, positive: Tensor, margin: float) -> Tensor:
    pos_term = 0.5 * dist.pow(2)
    neg_term = 0.5 * (margin - dist).clamp_min(0.0).pow(2)
    return torch.where(positive, pos_term, neg_term)


def contrastive_loss(
    anchor: Tensor,
    others: Tensor,
    labels: Tensor,
    margin: float = 0.7,
    *,
    reduction: str = "sum",
    normalize: bool = True,
) -> Tensor:
    """Contrastive loss between an anchor and the other images of its tuple.

    ``loss = Σ_m  y_m·½‖a − x_m‖² + (1 − y_m)·½·max(0, margin − ‖a − x_m‖)²`` with
    ``y_m = 1`` for positives and ``0`` for negatives (``reduction="mean"`` divides by
    the number of pairs). A batch of tuples is supported with a leading ``B`` axis.

    Args:
        anchor: anchor (query) descriptor(s).
        others: descriptors of the other tuple images.
        labels: 1 (or ``True``) for a positive, 0 (or ``False``) for a negative.
        margin: margin of the negative term.
        reduction: ``"sum"`` (cirtorch) or ``"mean"`` over all pairs.
        normalize: L2-normalise descriptors first (harmless when they already are).

    Returns:
        A scalar tensor.

    Raises:
        ValueError: on inconsistent shapes, labels other than 0/1, or a bad reduction.

    Shape:
        - anchor: :math:`(D,)`, others: :math:`(M, D)`, labels: :math:`(M,)`; or
        - anchor: :math:`(B, D)`, others: :math:`(B, M, D)`, labels: :math:`(B, M)`.
        - Output: :math:`()`.
    """
    check_reduction(reduction)
    check_ndim(anchor, (1, 2), "anchor", "(D,) or (B, D)")
    batched = anchor.dim() == 2
    layout = "(B, M, D)" if batched else "(M, D)"
    check_ndim(others, (anchor.dim() + 1,), "others", layout)
    check_ndim(labels, (anchor.dim(),), "labels", "(B, M)" if batched else "(M,)")
    if others.shape[-1] != anchor.shape[-1] or (batched and others.shape[0] != anchor.shape[0]):
        raise ValueError(
            f"others {tuple(others.shape)} does not fit anchor {tuple(anchor.shape)}: expected {layout}"
        )
    if labels.shape != others.shape[:-1]:
        raise ValueError(
            f"labels must have shape {tuple(others.shape[:-1])}, got {tuple(labels.shape)}"
        )
    if not ((labels == 0) | (labels == 1)).all():
        raise ValueError("labels must be 1 (positive) or 0 (negative)")
    if normalize:
        anchor = F.normalize(anchor, p=2, dim=-1)
        others = F.normalize(others, p=2, dim=-1)
    dist = safe_sqrt((anchor.unsqueeze(-2) - others).pow(2).sum(-1))  # (M,) or (B, M)
    terms = _pair_terms(dist, labels.bool(), margin)
    if terms.numel() == 0:
        return terms.sum()
    return terms.sum() if reduction == "sum" else terms.mean()


def pairwise_contrastive_loss(
    embeddings: Tensor,
    labels: Tensor,
    margin: float = 0.5,
    *,
    reduction: str = "mean",
    normalize: bool = True,
) -> Tensor:
    """Contrastive loss over every unordered pair ``i < j`` of a labelled batch.

    A pair is positive when the two labels are equal. Each pair counts once.

    Args:
        embeddings: batch of descriptors.
        labels: class id of each descriptor.
        margin: margin of the negative term.
        reduction: ``"mean"`` over the ``B(B−1)/2`` pairs, or ``"sum"``.
        normalize: L2-normalise the embeddings first.

    Returns:
        A scalar tensor (0, with a graph, for ``B < 2``).

    Shape:
        - embeddings: :math:`(B, D)`; labels: :math:`(B,)`.
        - Output: :math:`()`.
    """
    check_reduction(reduction)
    check_ndim(embeddings, (2,), "embeddings", "(B, D)")
    check_labels(labels, embeddings.shape[0])
    if normalize:
        embeddings = F.normalize(embeddings, p=2, dim=1)
    dist = pairwise_l2_distance(embeddings)
    i, j = torch.triu_indices(*dist.shape, offset=1, device=dist.device)
    terms = _pair_terms(dist[i, j], labels[i] == labels[j], margin)
    if terms.numel() == 0:
        return terms.sum()
    return terms.sum() if reduction == "sum" else terms.mean()


class ContrastiveLoss(nn.Module):
    """Module form of :func:`contrastive_loss` (tuple form).

    Shape:
        - anchor: :math:`(D,)` or :math:`(B, D)`; others: :math:`(M, D)` or
          :math:`(B, M, D)`; labels: :math:`(M,)` or :math:`(B, M)`.
        - Output: :math:`()`.
    """

    def __init__(self, margin: float = 0.7, reduction: str = "sum", normalize: bool = True) -> None:
        super().__init__()
        check_reduction(reduction)
        self.margin, self.reduction, self.normalize = margin, reduction, normalize

    def forward(self, anchor: Tensor, others: Tensor, labels: Tensor) -> Tensor:
        return contrastive_loss(
            anchor, others, labels, self.margin, reduction=self.reduction, normalize=self.normalize
        )

    def extra_repr(self) -> str:
        return f"margin={self.margin}, reduction={self.reduction!r}, normalize={self.normalize}"


class PairwiseContrastiveLoss(nn.Module):
    """Module form of :func:`pairwise_contrastive_loss` (batch form).

    Shape:
        - embeddings: :math:`(B, D)`; labels: :math:`(B,)`.
        - Output: :math:`()`.
    """

    def __init__(
        self, margin: float = 0.5, reduction: str = "mean", normalize: bool = True
    ) -> None:
        super().__init__()
        check_reduction(reduction)
        self.margin, self.reduction, self.normalize = margin, reduction, normalize

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        return pairwise_contrastive_loss(
            embeddings, labels, self.margin, reduction=self.reduction, normalize=self.normalize
        )

    def extra_repr(self) -> str:
        return f"margin={self.margin}, reduction={self.reduction!r}, normalize={self.normalize}"
