"""The losses of the global baseline, built from pytorch-metric-learning (PML).

:func:`metric_loss` returns, for a loss name and a mining rule, a :class:`MetricLoss`: a PML
loss and its PML miner as one module that maps ``(embeddings, labels)`` to a scalar.
Distances are PML's default, Euclidean between L2-normalised embeddings, with ``d(a, b)``
below. Every rule is checked against a naive loop over pairs and triplets in
``tests/metric/test_losses.py``.

========================  ===================================================================
``triplet, semihard``     ``TripletMarginMiner(margin, "semihard")`` + ``TripletMarginLoss``:
                          every triplet with ``0 < d(a,n) - d(a,p) <= margin``; the loss is
                          the mean of ``d(a,p) - d(a,n) + margin`` over those whose loss is
                          non-zero (PML's ``AvgNonZeroReducer``).
``triplet, batch_hard``   ``BatchHardMiner`` + ``TripletMarginLoss`` with ``MeanReducer``: for
                          each anchor with a positive and a negative, its farthest positive and
                          closest negative (Hermans et al. 2017); mean over the anchors.
``triplet, all``          ``TripletMarginLoss`` with ``MeanReducer`` and no miner: mean of
                          ``max(0, d(a,p) - d(a,n) + margin)`` over every valid triplet.
``contrastive``           ``ContrastiveLoss(pos_margin=0, neg_margin=margin)``: mean of ``d``
                          over the positive pairs with ``d > 0`` plus mean of
                          ``margin - d`` over the negative pairs closer than ``margin`` (both
                          orders of each pair).
``margin``                ``DistanceWeightedMiner(cutoff=0.5, nonzero_loss_cutoff=1.4)`` +
                          ``MarginLoss(margin=alpha, beta, learn_beta=True, nu=0)`` (Wu et al.
                          2017): per anchor ``K`` triplets, positives drawn at random, negatives
                          drawn with probability ``1/q(d)`` (``d < 1.4``); the loss is
                          ``[alpha + d(a,p) - beta]+ + [alpha + beta - d(a,n)]+`` summed over
                          the triplets and divided by the number of non-zero terms.
========================  ===================================================================

The distance-weighted miner runs on a float64 copy of the embeddings: PML normalises its
sampling weights by one maximum over the whole batch, and in float32 the weights of every
anchor whose nearest negative is much farther than the batch's nearest negative pair
underflow to zero (at 512 dimensions, 120 of 128 anchors of a P x K batch with one close
pair of classes got no triplet); float64 keeps them. Random draws (the margin loss's
positives and negatives) come from torch's global generators, which
:func:`lit.metric.train_global` seeds.
"""

from __future__ import annotations

from pytorch_metric_learning import losses as pml_losses
from pytorch_metric_learning import miners as pml_miners
from pytorch_metric_learning import reducers as pml_reducers
from torch import Tensor, nn

from .._checks import check_choice
from ..errors import UsageError
from .options import LOSSES, MINING

#: The margin of each loss when none is given (the triplet / contrastive margin, the margin
#: loss's ``alpha``).
DEFAULT_MARGINS = {"triplet": 0.1, "contrastive": 0.5, "margin": 0.2}


class MetricLoss(nn.Module):
    """A pytorch-metric-learning loss with its miner: ``(embeddings, labels) -> scalar``.

    Args:
        loss: a PML loss (``pytorch_metric_learning.losses``).
        miner: a PML miner, or ``None``: the loss then forms its own tuples (every pair or
            every triplet of the batch).
        mine_in_float64: give the miner a float64 copy of the embeddings (the loss still
            runs in their own dtype).

    Shape:
        - embeddings: :math:`(B, D)` floating point; labels: :math:`(B,)` integers.
        - Output: :math:`()`; 0, still attached to the graph, when the batch has no tuple.
    """

    def __init__(self, loss: nn.Module, miner: nn.Module | None = None, *, mine_in_float64: bool = False) -> None:
        super().__init__()
        self.loss = loss
        self.miner = miner
        self.mine_in_float64 = bool(mine_in_float64)

    @property
    def beta(self) -> Tensor | None:
        """The margin loss's learnable boundary (``None`` for the other losses)."""
        beta = getattr(self.loss, "beta", None)
        return beta if isinstance(beta, Tensor) else None

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        if not isinstance(embeddings, Tensor) or not embeddings.is_floating_point():
            raise TypeError(f"embeddings must be a floating-point tensor, got {getattr(embeddings, 'dtype', type(embeddings).__name__)}")
        if embeddings.dim() != 2:
            raise UsageError(f"embeddings must have shape (B, D), got {tuple(embeddings.shape)}")
        if not isinstance(labels, Tensor) or labels.is_floating_point() or labels.is_complex():
            raise TypeError(f"labels must be an integer tensor, got {getattr(labels, 'dtype', type(labels).__name__)}")
        if labels.dim() != 1 or labels.shape[0] != embeddings.shape[0]:
            raise UsageError(f"labels must have shape ({embeddings.shape[0]},), got {tuple(labels.shape)}")
        if self.miner is None:
            return self.loss(embeddings, labels)
        mined = embeddings.detach()
        tuples = self.miner(mined.double() if self.mine_in_float64 else mined, labels)
        return self.loss(embeddings, labels, tuples)


def metric_loss(loss: str = "triplet", mining: str = "semihard", *, margin: float | None = None,
                beta: float = 1.2) -> MetricLoss:
    """The loss of the global baseline for a loss name and a mining rule (see the module
    docstring for each definition).

    Args:
        loss: ``"triplet"``, ``"contrastive"`` or ``"margin"``.
        mining: triplet mining, ``"semihard"``, ``"batch_hard"`` or ``"all"`` (the other
            losses ignore it).
        margin: the triplet or contrastive margin, or the margin loss's ``alpha``; ``None``
            for :data:`DEFAULT_MARGINS`.
        beta: initial boundary of the margin loss (one learnable scalar).

    Returns:
        The module; the margin loss's boundary is its only parameter (``.beta``).
    """
    check_choice(loss, "loss", LOSSES)
    check_choice(mining, "mining", MINING)
    m = DEFAULT_MARGINS[loss] if margin is None else float(margin)
    if loss == "triplet":
        if mining == "semihard":
            return MetricLoss(pml_losses.TripletMarginLoss(margin=m),
                              pml_miners.TripletMarginMiner(margin=m, type_of_triplets="semihard"))
        if mining == "batch_hard":
            return MetricLoss(pml_losses.TripletMarginLoss(margin=m, reducer=pml_reducers.MeanReducer()),
                              pml_miners.BatchHardMiner())
        return MetricLoss(pml_losses.TripletMarginLoss(margin=m, reducer=pml_reducers.MeanReducer()))
    if loss == "contrastive":
        return MetricLoss(pml_losses.ContrastiveLoss(pos_margin=0.0, neg_margin=m))
    return MetricLoss(pml_losses.MarginLoss(margin=m, nu=0.0, beta=float(beta), learn_beta=True),
                      pml_miners.DistanceWeightedMiner(cutoff=0.5, nonzero_loss_cutoff=1.4),
                      mine_in_float64=True)


__all__ = ["DEFAULT_MARGINS", "MetricLoss", "metric_loss"]
