"""Validation mAP during training, with global descriptors.

Queries and database images are described by the model's global descriptor
(:meth:`SuperFeatureModel.forward_global`) at the mining scales; the database is ranked by
cosine similarity and the average precision follows SPEC section 4 (junk images dropped
from the ranking; trapezoidal precision average). ASMK is not used here: a global
descriptor is cheap enough to run every epoch and moves with the super-features it sums.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from ..evaluate import compute_ap
from .tuples import ValidationSet, global_descriptors


def average_precision(ranking: Sequence[int], positives: Sequence[int], junk: Sequence[int] = ()) -> float:
    """AP of one ranked list (SPEC section 4).

    Junk images are removed from the ranking; the ``j``-th positive (0-based) at rank ``r``
    (0-based, after removal) adds ``(p0 + p1) / 2 / npos`` with ``p0 = j / r`` (1 when
    ``r = 0``) and ``p1 = (j + 1) / (r + 1)``.

    Returns:
        AP in ``[0, 1]``; ``nan`` when there is no positive.
    """
    pos, junk_set = set(int(p) for p in positives), set(int(j) for j in junk)
    if not pos:
        return float("nan")
    kept = [int(i) for i in ranking if int(i) not in junk_set]
    return compute_ap([r for r, i in enumerate(kept) if i in pos], len(pos))


def mean_average_precision(
    scores: Tensor | np.ndarray, positives: Sequence[Sequence[int]], junk: Sequence[Sequence[int]] | None = None
) -> tuple[float, list[float]]:
    """mAP of a ``(queries x database)`` score matrix (higher is better).

    Queries without positives are left out of the mean.

    Returns:
        ``(mAP, APs)``; APs of queries without positives are ``nan``.
    """
    s = torch.as_tensor(scores).float()
    order = torch.sort(s, dim=1, descending=True, stable=True).indices.cpu().numpy()
    junk = junk if junk is not None else [()] * len(positives)
    aps = [average_precision(order[i], positives[i], junk[i]) for i in range(len(positives))]
    valid = [a for a in aps if not np.isnan(a)]
    return (float(np.mean(valid)) if valid else float("nan")), aps


@torch.no_grad()
def validation_map(
    model,
    vset: ValidationSet,
    scales: Sequence[float] = (1.0,),
    num_workers: int = 0,
    autocast: Callable | None = None,
    dist=None,
) -> float:
    """Global-descriptor mAP of ``model`` on a :class:`ValidationSet` (fraction, not x100).

    With a distributed context the images are shared among the processes and every
    process returns the same value.
    """
    kw = dict(scales=scales, dist=dist, num_workers=num_workers, autocast=autocast)
    db = global_descriptors(model, vset.load_db, range(len(vset.db_paths)), **kw)
    if all(q.view_seed is None for q in vset.queries):  # queries are database images
        q = db[[q.source for q in vset.queries]]
    else:
        q = global_descriptors(model, vset.load_query, range(len(vset.queries)), **kw)
    mean_ap, _ = mean_average_precision(q @ db.T, vset.positives, vset.junk)
    return mean_ap
