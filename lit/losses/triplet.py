"""Triplet margin loss on a labelled batch, with online mining (see :mod:`.mining`)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ._checks import check_labels, check_ndim
from .distance import pairwise_l2_distance
from .mining import Triplets, all_triplets, batch_hard_triplets, semihard_triplets

MINING = ("semihard", "batch_hard", "all")


def mine_triplets(dist: Tensor, labels: Tensor, mining: str, margin: float) -> Triplets:
    """Dispatch to a miner by name: ``"semihard"``, ``"batch_hard"`` or ``"all"``.

    Shape:
        - dist: :math:`(B, B)`; labels: :math:`(B,)`.
        - Output: three :math:`(T,)` int64 tensors.
    """
    if mining == "semihard":
        return semihard_triplets(dist, labels, margin)
    if mining == "batch_hard":
        return batch_hard_triplets(dist, labels)
    if mining == "all":
        return all_triplets(labels)
    raise ValueError(f"mining must be one of {MINING}, got {mining!r}")


def triplet_margin_loss(
    embeddings: Tensor,
    labels: Tensor,
    margin: float = 0.1,
    mining: str = "semihard",
    *,
    normalize: bool = True,
) -> Tensor:
    """Mean of ``max(0, d(a, p) − d(a, n) + margin)`` over the mined triplets.

    Distances are Euclidean between (by default L2-normalised) embeddings. Triplets are
    mined without gradient on the same distances (:mod:`lit.losses.mining`); the loss
    is averaged over *all* mined triplets, including those with zero loss. With no
    triplet the loss is 0, still attached to the graph.

    Args:
        embeddings: batch of descriptors.
        labels: class id of each descriptor.
        margin: triplet margin (also the width of the semi-hard band).
        mining: ``"semihard"``, ``"batch_hard"`` or ``"all"``.
        normalize: L2-normalise the embeddings first.

    Returns:
        A scalar tensor.

    Shape:
        - embeddings: :math:`(B, D)`; labels: :math:`(B,)`.
        - Output: :math:`()`.
    """
    if mining not in MINING:
        raise ValueError(f"mining must be one of {MINING}, got {mining!r}")
    check_ndim(embeddings, (2,), "embeddings", "(B, D)")
    check_labels(labels, embeddings.shape[0])
    if normalize:
        embeddings = F.normalize(embeddings, p=2, dim=1)
    dist = pairwise_l2_distance(embeddings)
    a, p, n = mine_triplets(dist, labels, mining, margin)
    terms = (dist[a, p] - dist[a, n] + margin).clamp_min(0.0)
    return terms.sum() if terms.numel() == 0 else terms.mean()


class TripletMarginLoss(nn.Module):
    """Module form of :func:`triplet_margin_loss`.

    Shape:
        - embeddings: :math:`(B, D)`; labels: :math:`(B,)`.
        - Output: :math:`()`.
    """

    def __init__(
        self, margin: float = 0.1, mining: str = "semihard", normalize: bool = True
    ) -> None:
        super().__init__()
        if mining not in MINING:
            raise ValueError(f"mining must be one of {MINING}, got {mining!r}")
        self.margin, self.mining, self.normalize = margin, mining, normalize

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        return triplet_margin_loss(
            embeddings, labels, self.margin, self.mining, normalize=self.normalize
        )

    def extra_repr(self) -> str:
        return f"margin={self.margin}, mining={self.mining!r}, normalize={self.normalize}"
