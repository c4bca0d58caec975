"""Super-feature loss of FIRe (SPEC section 5).

For one training tuple (query, positive, negatives), super-features of the query and
the positive are matched; only matches between super-features of the *same template
index* ``n`` are kept. For each kept ``n`` a contrastive loss pulls ``query_n`` towards
``positive_n`` and pushes it away from every negative's super-feature ``n``.

Matching (indices only, no gradient), on L2-normalised super-features:

1. Euclidean distances ``d[i, j] = ‖q_i − p_j‖``.
2. Reciprocal nearest neighbours: ``j`` is the nearest positive of query ``i`` and
   ``i`` is the nearest query of positive ``j``.
3. Ratio test, from the **query side only**: ``d1 / d2 ≤ ratio`` where ``d1`` is the
   distance from ``q_i`` to its nearest positive and ``d2`` the distance to its
   *second* nearest positive. It is implemented as ``d1 ≤ ratio · d2`` with ``d2 > 0``
   (two positives at distance 0 are ambiguous, as ``0/0`` would be). The published
   code divides ``d1`` by the *index* of the second neighbour instead of its distance
   (FIRe issue #3); that is not reproduced here. The test is not repeated from the
   positive side: SPEC states one ratio per match, and reciprocity already requires
   the positive to prefer this query. With a single positive super-feature (N = 1)
   there is no second neighbour and the test passes.
4. Same-index filter: keep ``(i, j)`` only if ``i == j``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import UsageError
from ._checks import check_ndim
from .distance import safe_sqrt


class SuperFeatureLossOutput(NamedTuple):
    """Loss of one tuple and the template indices that produced it.

    Shape:
        - loss: :math:`()`.
        - matches: :math:`(M,)` int64 template indices ``n`` kept by the matching;
          ``matches.numel()`` is the number of kept matches.
    """

    loss: Tensor
    matches: Tensor


def _check_pair(query: Tensor, positive: Tensor) -> None:
    check_ndim(query, (2,), "query", "(N, D)")
    check_ndim(positive, (2,), "positive", "(N, D)")
    if query.shape != positive.shape:
        raise UsageError(
            f"query and positive must have the same shape (N, D), got {tuple(query.shape)} "
            f"and {tuple(positive.shape)}"
        )


@torch.no_grad()
def match_for_loss(query: Tensor, positive: Tensor, *, ratio: float | None = 0.9) -> Tensor:
    """Template indices ``n`` whose super-features match between query and positive.

    See the module docstring for the exact rule (reciprocal nearest neighbours in L2
    distance, ratio test ``d1/d2 ≤ ratio`` from the query side, same template index).
    Runs without gradient; the inputs are L2-normalised here.

    Args:
        query: super-features of the query image.
        positive: super-features of the positive image (same template layout).
        ratio: ratio-test threshold; ``None`` disables the ratio test.

    Returns:
        Sorted int64 indices of the kept templates (possibly empty).

    Shape:
        - query, positive: :math:`(N, D)`.
        - Output: :math:`(M,)` with ``M ≤ N``.
    """
    _check_pair(query, positive)
    n = query.shape[0]
    if n == 0:
        return torch.zeros(0, dtype=torch.long, device=query.device)
    q = F.normalize(query.detach(), p=2, dim=1)
    p = F.normalize(positive.detach(), p=2, dim=1)
    # exact differences (no inner-product shortcut): near-ties decide the ratio test
    dist = torch.cdist(q[None], p[None], compute_mode="donot_use_mm_for_euclid_dist")[0]
    nn_of_query = dist.argmin(dim=1)  # (N,) nearest positive of each query super-feature
    nn_of_positive = dist.argmin(dim=0)  # (N,) nearest query of each positive super-feature
    idx = torch.arange(n, device=query.device)
    keep = (nn_of_query == idx) & (nn_of_positive == idx)  # reciprocal and same index
    if ratio is not None and n >= 2:
        two = dist.topk(2, dim=1, largest=False).values  # (N, 2): d1, d2 (distances)
        d1, d2 = two[:, 0], two[:, 1]
        keep &= (d1 <= ratio * d2) & (d2 > 0)
    return idx[keep]


def superfeature_loss(
    query: Tensor,
    positive: Tensor,
    negatives: Tensor,
    *,
    margin: float = 1.1,
    ratio: float | None = 0.9,
    matches: Tensor | None = None,
    return_matches: bool = False,
) -> Tensor | SuperFeatureLossOutput:
    """Contrastive loss on the matched super-features of one training tuple.

    All super-features are L2-normalised first. With ``M`` the kept template indices
    (:func:`match_for_loss`), the loss is

    ``Σ_{n∈M} [ ½‖q_n − p_n‖² + Σ_k ½·max(0, margin − ‖q_n − neg_{k,n}‖)² ]``

    — summed over matches and negatives, not averaged. Without any match the loss is
    0, still attached to the inputs' graph (its gradient is zero). Matching carries no
    gradient; the loss terms do.

    Args:
        query: super-features of the query image.
        positive: super-features of the positive image.
        negatives: super-features of the ``K`` negative images (``K`` may be 0).
        margin: contrastive margin for the negatives.
        ratio: ratio-test threshold for the matching; ``None`` disables it.
        matches: precomputed template indices to use instead of matching (for
            example to keep the matching fixed while checking gradients).
        return_matches: also return the kept indices.

    Returns:
        The scalar loss, or a :class:`SuperFeatureLossOutput` ``(loss, matches)`` when
        ``return_matches`` is true.

    Raises:
        UsageError: on inconsistent shapes or out-of-range ``matches``.

    Shape:
        - query, positive: :math:`(N, D)`.
        - negatives: :math:`(K, N, D)`.
        - matches: :math:`(M,)` int64.
        - Output: :math:`()`.
    """
    _check_pair(query, positive)
    check_ndim(negatives, (3,), "negatives", "(K, N, D)")
    if negatives.shape[1:] != query.shape:
        raise UsageError(
            f"negatives must have shape (K, {query.shape[0]}, {query.shape[1]}), "
            f"got {tuple(negatives.shape)}"
        )
    if matches is None:
        matches = match_for_loss(query, positive, ratio=ratio)
    else:
        check_ndim(matches, (1,), "matches", "(M,)")
        matches = matches.to(device=query.device, dtype=torch.long)
        if matches.numel() and (int(matches.min()) < 0 or int(matches.max()) >= query.shape[0]):
            raise UsageError(f"matches must be template indices in 0..{query.shape[0] - 1}")

    q = F.normalize(query, p=2, dim=-1)[matches]  # (M, D)
    p = F.normalize(positive, p=2, dim=-1)[matches]  # (M, D)
    neg = F.normalize(negatives, p=2, dim=-1)[:, matches]  # (K, M, D)
    positive_terms = 0.5 * (q - p).pow(2).sum(-1)  # (M,)
    neg_dist = safe_sqrt((q.unsqueeze(0) - neg).pow(2).sum(-1))  # (K, M)
    negative_terms = 0.5 * (margin - neg_dist).clamp_min(0.0).pow(2)
    # sums over empty index sets give 0 with a grad_fn: no special case for M = 0
    loss = positive_terms.sum() + negative_terms.sum()
    return SuperFeatureLossOutput(loss, matches) if return_matches else loss


class SuperFeatureLoss(nn.Module):
    """Module form of :func:`superfeature_loss` for one tuple.

    Args:
        margin: contrastive margin for the negatives (FIRe: 1.1).
        ratio: ratio-test threshold (FIRe: 0.9); ``None`` disables it.

    Shape:
        - query, positive: :math:`(N, D)`; negatives: :math:`(K, N, D)`.
        - Output: :math:`()`, or ``(loss, matches)`` with ``return_matches=True``.
    """

    def __init__(self, margin: float = 1.1, ratio: float | None = 0.9) -> None:
        super().__init__()
        self.margin = margin
        self.ratio = ratio

    def forward(
        self, query: Tensor, positive: Tensor, negatives: Tensor, return_matches: bool = False
    ) -> Tensor | SuperFeatureLossOutput:
        return superfeature_loss(
            query,
            positive,
            negatives,
            margin=self.margin,
            ratio=self.ratio,
            return_matches=return_matches,
        )

    def extra_repr(self) -> str:
        return f"margin={self.margin}, ratio={self.ratio}"
