"""Margin loss of Wu et al., "Sampling Matters in Deep Embedding Learning" (ICCV 2017).

For a pair ``(i, j)`` at distance ``d`` with ``y = +1`` (same class) or ``−1``:
``max(0, α + y·(d − β))``. The boundary ``β`` is learnable, either one scalar or one
per class (indexed by the anchor's class); ``α`` is the margin around it. Negatives
are picked by distance-weighted sampling (:func:`lit.losses.mining.distance_weighted_triplets`)
or all pairs are used.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._checks import check_labels, check_ndim
from .distance import pairwise_l2_distance
from .mining import distance_weighted_triplets, negative_pairs, positive_pairs

SAMPLING = ("distance_weighted", "all")


def margin_loss(
    embeddings: Tensor,
    labels: Tensor,
    beta: Tensor | float = 1.2,
    *,
    alpha: float = 0.2,
    nu: float = 0.0,
    sampling: str = "distance_weighted",
    cutoff: float = 0.5,
    nonzero_loss_cutoff: float = 1.4,
    normalize: bool = True,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Margin loss with a learnable boundary ``β``.

    Pairs: with ``sampling="distance_weighted"``, every ordered positive pair
    ``(a, p)`` plus one negative ``(a, n)`` sampled for it (one triplet per positive
    pair); with ``sampling="all"``, every ordered positive pair and every ordered
    negative pair. Then

    ``loss = (Σ_pos max(0, α + d − β_a) + Σ_neg max(0, α − d + β_a) + ν·Σ_{(a,p)} β_a) / c``

    where ``β_a`` is ``β`` (or ``β[labels[a]]`` when per class), the ``ν`` term
    (the paper's β regulariser) counts one ``β_a`` per positive pair, and ``c`` is the
    number of pair terms with a non-zero loss (at least 1), as in the paper.

    Args:
        embeddings: batch of descriptors.
        labels: class id of each descriptor (``0..C−1`` when ``beta`` is per class).
        beta: boundary, a float, a 0-d tensor or a :math:`(C,)` tensor per class.
        alpha: margin around the boundary.
        nu: weight of the β regulariser.
        sampling: ``"distance_weighted"`` or ``"all"``.
        cutoff: distance clamp of distance-weighted sampling.
        nonzero_loss_cutoff: negatives at least this far are not sampled.
        normalize: L2-normalise the embeddings first (the sampling assumes unit vectors).
        generator: random generator for the sampling.

    Returns:
        A scalar tensor.

    Shape:
        - embeddings: :math:`(B, D)`; labels: :math:`(B,)`; beta: :math:`()` or :math:`(C,)`.
        - Output: :math:`()`.
    """
    if sampling not in SAMPLING:
        raise ValueError(f"sampling must be one of {SAMPLING}, got {sampling!r}")
    check_ndim(embeddings, (2,), "embeddings", "(B, D)")
    check_labels(labels, embeddings.shape[0])
    beta = torch.as_tensor(beta, dtype=embeddings.dtype, device=embeddings.device)
    check_ndim(beta, (0, 1), "beta", "() or (C,)")
    if (
        beta.dim() == 1
        and labels.numel()
        and (int(labels.min()) < 0 or int(labels.max()) >= beta.shape[0])
    ):
        raise ValueError(
            f"per-class beta has {beta.shape[0]} entries; labels must be in 0..{beta.shape[0] - 1}"
        )
    if normalize:
        embeddings = F.normalize(embeddings, p=2, dim=1)
    dist = pairwise_l2_distance(embeddings)
    if sampling == "all":
        pa, pp = positive_pairs(labels)
        na, nn_ = negative_pairs(labels)
    else:
        pa, pp, nn_ = distance_weighted_triplets(
            dist,
            labels,
            embeddings.shape[1],
            cutoff=cutoff,
            nonzero_loss_cutoff=nonzero_loss_cutoff,
            generator=generator,
        )
        na = pa
    beta_p = beta[labels[pa]] if beta.dim() == 1 else beta.expand(pa.shape)
    beta_n = beta[labels[na]] if beta.dim() == 1 else beta.expand(na.shape)
    pos_loss = (alpha + dist[pa, pp] - beta_p).clamp_min(0.0)
    neg_loss = (alpha - dist[na, nn_] + beta_n).clamp_min(0.0)
    count = (pos_loss > 0).sum() + (neg_loss > 0).sum()
    total = pos_loss.sum() + neg_loss.sum() + nu * beta_p.sum()
    return total / count.clamp_min(1).to(total.dtype)


class MarginLoss(nn.Module):
    """Margin loss with its learnable boundary ``β`` as a parameter.

    The paper trains ``β`` with its own (larger) learning rate; put ``self.beta`` in
    a separate optimiser parameter group for that.

    Args:
        num_classes: one ``β`` per class when given, else a single scalar ``β``.
        beta_init: initial value of ``β``.
        alpha: margin around the boundary.
        nu: weight of the β regulariser.
        sampling: ``"distance_weighted"`` or ``"all"``.
        cutoff: distance clamp of distance-weighted sampling.
        nonzero_loss_cutoff: negatives at least this far are not sampled.

    Shape:
        - embeddings: :math:`(B, D)`; labels: :math:`(B,)`.
        - Output: :math:`()`.
    """

    def __init__(
        self,
        num_classes: int | None = None,
        beta_init: float = 1.2,
        alpha: float = 0.2,
        nu: float = 0.0,
        sampling: str = "distance_weighted",
        cutoff: float = 0.5,
        nonzero_loss_cutoff: float = 1.4,
    ) -> None:
        super().__init__()
        if sampling not in SAMPLING:
            raise ValueError(f"sampling must be one of {SAMPLING}, got {sampling!r}")
        shape = () if num_classes is None else (num_classes,)
        self.beta = nn.Parameter(torch.full(shape, float(beta_init)))
        self.alpha, self.nu, self.sampling = alpha, nu, sampling
        self.cutoff, self.nonzero_loss_cutoff = cutoff, nonzero_loss_cutoff

    def forward(
        self, embeddings: Tensor, labels: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        return margin_loss(
            embeddings,
            labels,
            self.beta,
            alpha=self.alpha,
            nu=self.nu,
            sampling=self.sampling,
            cutoff=self.cutoff,
            nonzero_loss_cutoff=self.nonzero_loss_cutoff,
            generator=generator,
        )

    def extra_repr(self) -> str:
        return (
            f"beta_shape={tuple(self.beta.shape)}, alpha={self.alpha}, nu={self.nu}, "
            f"sampling={self.sampling!r}"
        )
