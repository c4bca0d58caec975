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


@torch.no_grad()
def match_rule_check(model, vset: ValidationSet, max_queries: int = 12) -> dict:
    """How the model's match rule (:meth:`SuperFeatureModel.match_rule`) does on validation photos.

    For up to ``max_queries`` queries, the query is matched with its first positive (a
    same-place pair) and with the first database image that is neither positive nor junk
    (a different-place pair), under the model's own rule. A rule that still fits matches
    most same-place pairs and few different-place ones.

    Returns:
        ``{"rule", "same_place_pairs", "same_place_matched", "different_place_pairs",
        "different_place_matched", "same_place_matches", "different_place_matches"}``
        (``*_matched``: pairs with at least one match; ``*_matches``: mean matches per pair).
    """
    rule = model.match_rule()
    was_training = model.training
    model.eval()
    cache: dict[tuple[str, int], object] = {}

    def feats(kind: str, i: int):
        if (kind, i) not in cache:
            img = vset.load_query(i) if kind == "q" else vset.load_db(i)
            cache[(kind, i)] = model.extract(img.to(model.device))
        return cache[(kind, i)]

    same, different = [], []
    for i, pos in enumerate(vset.positives[:max_queries]):
        q = vset.queries[i]
        positives = [p for p in pos if q.view_seed is not None or p != q.source]
        if positives:
            same.append(len(rule.match(feats("q", i), feats("db", positives[0]))))
        excluded = set(pos) | set(vset.junk[i]) | {q.source}
        others = [j for j in range(len(vset.db_paths)) if j not in excluded]
        if others:
            different.append(len(rule.match(feats("q", i), feats("db", others[0]))))
    model.train(was_training)
    return {"rule": rule.describe(),
            "same_place_pairs": len(same), "same_place_matched": sum(n > 0 for n in same),
            "same_place_matches": float(np.mean(same)) if same else float("nan"),
            "different_place_pairs": len(different), "different_place_matched": sum(n > 0 for n in different),
            "different_place_matches": float(np.mean(different)) if different else float("nan")}


def describe_rule_check(check: dict, before: dict | None = None) -> str:
    """One line for the training log: pairs matched under the rule (and at the start)."""
    def part(key: str) -> str:
        n, k = check[f"{key}_pairs"], check[f"{key}_matched"]
        was = f", {before[f'{key}_matched']}/{before[f'{key}_pairs']} before training" if before else ""
        return f"{k}/{n} {key.replace('_', '-')} pairs matched (mean {check[f'{key}_matches']:.1f} matches{was})"
    return f"match rule ({check['rule']}) on validation photos: {part('same_place')}, {part('different_place')}"
