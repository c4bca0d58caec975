"""Triplet miners of lit.losses.mining against naive loops over every candidate."""

from __future__ import annotations

import math

import pytest
import torch

from lit.losses import (
    Triplets,
    all_triplets,
    batch_hard_triplets,
    distance_weighted_probabilities,
    distance_weighted_triplets,
    negative_pairs,
    positive_pairs,
    semihard_triplets,
)


def _batch(b=12, d=3, labels=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.normalize(torch.randn(b, d, generator=g, dtype=torch.float64), dim=1)
    dist = torch.cdist(x, x)
    if labels is None:
        labels = torch.randint(0, 3, (b,), generator=g)
    return dist, torch.as_tensor(labels)


def _as_set(t: Triplets) -> set:
    got = list(zip(t.anchors.tolist(), t.positives.tolist(), t.negatives.tolist(), strict=True))
    assert len(got) == len(set(got)), "duplicate triplets"
    return set(got)


def naive_all(labels):
    b = len(labels)
    return {
        (a, p, n)
        for a in range(b)
        for p in range(b)
        for n in range(b)
        if a != p and labels[a] == labels[p] and labels[n] != labels[a]
    }


def naive_batch_hard(dist, labels):
    b, out = len(labels), set()
    for a in range(b):
        best_p, best_n = None, None
        for p in range(b):
            if (
                p != a
                and labels[p] == labels[a]
                and (best_p is None or dist[a][p] > dist[a][best_p])
            ):
                best_p = p
        for n in range(b):
            if labels[n] != labels[a] and (best_n is None or dist[a][n] < dist[a][best_n]):
                best_n = n
        if best_p is not None and best_n is not None:
            out.add((a, best_p, best_n))
    return out


def naive_semihard(dist, labels, margin):
    b, out = len(labels), set()
    for a in range(b):
        for p in range(b):
            if p == a or labels[p] != labels[a]:
                continue
            best = None
            for n in range(b):
                if labels[n] == labels[a]:
                    continue
                if dist[a][p] < dist[a][n] < dist[a][p] + margin:
                    if best is None or dist[a][n] < dist[a][best]:
                        best = n
            if best is not None:
                out.add((a, p, best))
    return out


LABEL_CASES = [
    None,  # random labels
    [0, 0, 1, 1, 2, 2, 0, 1, 2, 3, 0, 1],  # class 3 is a singleton: an anchor without positive
]


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("labels", LABEL_CASES)
def test_all_triplets_matches_naive_loops(seed, labels):
    _, lab = _batch(labels=labels, seed=seed)
    got = all_triplets(lab)
    assert _as_set(got) == naive_all(lab.tolist())
    order = list(
        zip(got.anchors.tolist(), got.positives.tolist(), got.negatives.tolist(), strict=True)
    )
    assert order == sorted(order)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("labels", LABEL_CASES)
def test_batch_hard_triplets_matches_naive_loops(seed, labels):
    dist, lab = _batch(labels=labels, seed=seed)
    expected = naive_batch_hard(dist.tolist(), lab.tolist())
    assert expected
    assert _as_set(batch_hard_triplets(dist, lab)) == expected


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("labels", LABEL_CASES)
@pytest.mark.parametrize("margin", [0.05, 0.2, 1.0])
def test_semihard_triplets_matches_naive_loops(seed, labels, margin):
    dist, lab = _batch(labels=labels, seed=seed)
    expected = naive_semihard(dist.tolist(), lab.tolist(), margin)
    got = semihard_triplets(dist, lab, margin)
    assert _as_set(got) == expected
    d = dist
    assert (d[got.anchors, got.positives] < d[got.anchors, got.negatives]).all()
    assert (d[got.anchors, got.negatives] < d[got.anchors, got.positives] + margin).all()


def test_semihard_skips_pairs_without_semihard_negative():
    dist, lab = _batch(seed=1)
    n_pairs = len(positive_pairs(lab)[0])
    found = len(semihard_triplets(dist, lab, 0.05))
    assert 0 < found < n_pairs  # some pairs have a candidate, some are skipped


def test_semihard_picks_the_closest_negative_in_the_band():
    # anchor 0, positive 1 at distance 1.0; negatives 2, 3, 4 at 0.9 (too hard), 1.2, 1.05
    dist = torch.tensor(
        [
            [0.0, 1.0, 0.9, 1.2, 1.05],
            [1.0, 0.0, 2.0, 2.0, 2.0],
            [0.9, 2.0, 0.0, 2.0, 2.0],
            [1.2, 2.0, 2.0, 0.0, 2.0],
            [1.05, 2.0, 2.0, 2.0, 0.0],
        ]
    )
    labels = torch.tensor([0, 0, 1, 2, 3])
    got = semihard_triplets(dist, labels, margin=0.3)
    assert (0, 1, 4) in _as_set(got)
    assert _as_set(semihard_triplets(dist, labels, margin=0.01)) == set()


def test_batch_hard_handles_ties_and_degenerate_batches():
    labels = torch.tensor([0, 0, 0, 0])  # no negatives at all
    dist, _ = _batch(4)
    for t in (
        all_triplets(labels),
        batch_hard_triplets(dist, labels),
        semihard_triplets(dist, labels, 1.0),
    ):
        assert len(t) == 0 and t.anchors.dtype == torch.long
    labels = torch.arange(4)  # no positives at all
    for t in (
        all_triplets(labels),
        batch_hard_triplets(dist, labels),
        semihard_triplets(dist, labels, 1.0),
    ):
        assert len(t) == 0


def test_pairs_match_naive_loops():
    _, lab = _batch(seed=3)
    lab_l = lab.tolist()
    b = len(lab_l)
    a, p = positive_pairs(lab)
    assert list(zip(a.tolist(), p.tolist(), strict=True)) == [
        (i, j) for i in range(b) for j in range(b) if i != j and lab_l[i] == lab_l[j]
    ]
    a, n = negative_pairs(lab)
    assert list(zip(a.tolist(), n.tolist(), strict=True)) == [
        (i, j) for i in range(b) for j in range(b) if lab_l[i] != lab_l[j]
    ]


def naive_dw_probabilities(dist, labels, dim, cutoff, nonzero_loss_cutoff):
    b = len(labels)
    rows = []
    for a in range(b):
        negs = [n for n in range(b) if labels[n] != labels[a]]
        allowed = [n for n in negs if dist[a][n] < nonzero_loss_cutoff]
        w = [0.0] * b
        if allowed:
            for n in allowed:
                d = max(dist[a][n], cutoff)
                w[n] = d ** (2 - dim) * max(1 - d * d / 4, 1e-8) ** (-(dim - 3) / 2)
        else:
            for n in negs:
                w[n] = 1.0
        s = sum(w)
        rows.append([v / s if s > 0 else 0.0 for v in w])
    return rows


@pytest.mark.parametrize("dim", [3, 5])
@pytest.mark.parametrize("nonzero_loss_cutoff", [1.4, 1.1, 0.7, 0.3])  # all, some, no rows
def test_distance_weighted_probabilities_match_naive_formula(dim, nonzero_loss_cutoff):
    dist, lab = _batch(10, d=dim, labels=[0, 0, 0, 1, 1, 1, 2, 2, 2, 2], seed=2)
    got = distance_weighted_probabilities(dist, lab, dim, nonzero_loss_cutoff=nonzero_loss_cutoff)
    expected = torch.tensor(
        naive_dw_probabilities(dist.tolist(), lab.tolist(), dim, 0.5, nonzero_loss_cutoff),
        dtype=torch.float64,
    )
    assert torch.allclose(got, expected, atol=1e-12)
    assert torch.allclose(got.sum(1), torch.ones(10, dtype=got.dtype))


def test_distance_weighted_probabilities_row_without_negatives_is_zero():
    dist, lab = _batch(4, labels=[0, 0, 0, 0])
    assert torch.count_nonzero(distance_weighted_probabilities(dist, lab, 3)) == 0
    assert len(distance_weighted_triplets(dist, lab, 3)) == 0


def test_distance_weighted_triplets_are_valid_reproducible_and_follow_the_probabilities():
    dist, lab = _batch(6, d=4, labels=[0, 0, 1, 1, 2, 2], seed=5)
    probs = distance_weighted_probabilities(dist, lab, 4)
    t = distance_weighted_triplets(dist, lab, 4, generator=torch.Generator().manual_seed(0))
    assert list(zip(t.anchors.tolist(), t.positives.tolist(), strict=True)) == list(
        zip(*(x.tolist() for x in positive_pairs(lab)), strict=True)
    )
    assert (lab[t.negatives] != lab[t.anchors]).all()
    assert (probs[t.anchors, t.negatives] > 0).all()
    again = distance_weighted_triplets(dist, lab, 4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(t.negatives, again.negatives)


def test_distance_weighted_triplets_follow_the_probabilities():
    # 60 copies of one anchor (one class) and 3 negatives: 60·59 independent draws, all
    # from the same row of probabilities, in a single call
    g = torch.Generator().manual_seed(3)
    x = torch.nn.functional.normalize(torch.randn(4, 4, generator=g, dtype=torch.float64), dim=1)
    x = torch.cat([x[:1].expand(60, 4), x[1:]])
    dist = torch.cdist(x, x)
    lab = torch.tensor([0] * 60 + [1, 2, 3])
    kw = {"nonzero_loss_cutoff": 2.1}  # every negative may be drawn
    probs = distance_weighted_probabilities(dist, lab, 4, **kw)[0]
    assert (probs[60:] > 0.05).all()
    t = distance_weighted_triplets(dist, lab, 4, generator=torch.Generator().manual_seed(4), **kw)
    draws = len(t)
    assert draws == 60 * 59
    freq = torch.bincount(t.negatives, minlength=63).to(torch.float64) / draws
    assert torch.allclose(freq, probs, atol=4 * math.sqrt(0.25 / draws))


def test_miners_reject_bad_shapes():
    dist, lab = _batch(5)
    with pytest.raises(ValueError):
        batch_hard_triplets(dist[:, :4], lab)
    with pytest.raises(ValueError):
        semihard_triplets(dist, lab[:4], 0.1)
    with pytest.raises(ValueError):
        all_triplets(lab[None])
    with pytest.raises(ValueError):
        distance_weighted_probabilities(dist, lab, 1)
