"""Losses of lit.losses against naive per-pair / per-template / per-triplet loops."""

from __future__ import annotations

import math

import pytest
import torch

from lit.losses import (
    AttentionDecorrelationLoss,
    ContrastiveLoss,
    MarginLoss,
    PairwiseContrastiveLoss,
    SuperFeatureLoss,
    TripletMarginLoss,
    attention_decorrelation_loss,
    contrastive_loss,
    distance_weighted_triplets,
    margin_loss,
    match_for_loss,
    pairwise_contrastive_loss,
    pairwise_l2_distance,
    superfeature_loss,
    triplet_margin_loss,
)

F64 = torch.float64


# ----------------------------------------------------------------------------- helpers


def _unit(v: torch.Tensor) -> torch.Tensor:
    return v / math.sqrt(float((v * v).sum()))


def _dist(u: torch.Tensor, v: torch.Tensor) -> float:
    return math.sqrt(sum((float(a) - float(b)) ** 2 for a, b in zip(u, v, strict=True)))


def _embeddings(b=10, d=4, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, d, generator=g, dtype=F64)
    labels = torch.arange(b) % classes
    return x, labels


# ------------------------------------------------------------- attention decorrelation


def naive_decorrelation(attention: torch.Tensor) -> float:
    per_image = []
    for maps in attention:
        flat = [m.reshape(-1) for m in maps]
        total, count = 0.0, 0
        for i in range(len(flat)):
            for j in range(len(flat)):
                if i == j:
                    continue
                dot = float((flat[i] * flat[j]).sum())
                total += dot / (float(flat[i].norm()) * float(flat[j].norm()))
                count += 1
        per_image.append(total / count)
    return sum(per_image) / len(per_image)


def test_decorrelation_matches_naive_loops():
    att = torch.rand(3, 5, 4, 3, generator=torch.Generator().manual_seed(1), dtype=F64)
    assert attention_decorrelation_loss(att).item() == pytest.approx(
        naive_decorrelation(att), abs=1e-12
    )


def test_decorrelation_single_image_equals_batch_of_one():
    att = torch.rand(6, 3, 3, dtype=F64)
    assert torch.allclose(
        attention_decorrelation_loss(att), attention_decorrelation_loss(att[None])
    )


def test_decorrelation_of_batch_is_mean_over_images():
    att = torch.rand(4, 5, 3, 3, dtype=F64)
    per_image = torch.stack([attention_decorrelation_loss(a) for a in att])
    assert torch.allclose(attention_decorrelation_loss(att), per_image.mean())


def test_decorrelation_of_identical_maps_is_one():
    one_map = torch.rand(1, 1, 5, 7)
    att = one_map.expand(2, 6, 5, 7) * torch.arange(1, 7.0).view(1, 6, 1, 1)  # scale is irrelevant
    assert attention_decorrelation_loss(att).item() == pytest.approx(1.0, abs=1e-6)


def test_decorrelation_of_disjoint_one_hot_maps_is_zero():
    att = torch.eye(12).view(12, 3, 4)  # map n is 1 at pixel n only
    assert attention_decorrelation_loss(att).item() == 0.0


def test_decorrelation_gradcheck():
    att = torch.rand(2, 3, 2, 3, dtype=F64).add_(0.1).requires_grad_()
    assert torch.autograd.gradcheck(attention_decorrelation_loss, (att,))


def test_decorrelation_module_and_exceptions():
    att = torch.rand(2, 3, 4, 4)
    assert torch.equal(AttentionDecorrelationLoss()(att), attention_decorrelation_loss(att))
    with pytest.raises(ValueError):
        attention_decorrelation_loss(torch.rand(3, 4))
    with pytest.raises(ValueError):
        attention_decorrelation_loss(torch.rand(2, 1, 4, 4))  # N = 1: no pair


# -------------------------------------------------------------------- super-feature loss


def naive_match(query, positive, ratio, *, buggy=False):
    """Reciprocal NN + ratio test (query side) + same index, by explicit loops.

    ``buggy=True`` reproduces the published mistake: ``d1`` divided by the *index* of
    the second nearest neighbour instead of its distance.
    """
    q = [_unit(v) for v in query]
    p = [_unit(v) for v in positive]
    n = len(q)
    d = [[_dist(q[i], p[j]) for j in range(n)] for i in range(n)]
    kept = []
    for i in range(n):
        order = sorted(range(n), key=lambda j: d[i][j])
        j = order[0]
        i_back = min(range(n), key=lambda k: d[k][j])
        if i_back != i or j != i:
            continue
        if ratio is not None and n >= 2:
            d1 = d[i][order[0]]
            denom = float(order[1]) if buggy else d[i][order[1]]
            if denom == 0 or d1 / denom > ratio:
                continue
        kept.append(i)
    return kept


def naive_superfeature_loss(query, positive, negatives, kept, margin):
    total = 0.0
    for n in kept:
        q = _unit(query[n])
        total += 0.5 * _dist(q, _unit(positive[n])) ** 2
        for k in range(negatives.shape[0]):
            total += 0.5 * max(0.0, margin - _dist(q, _unit(negatives[k, n]))) ** 2
    return total


def _tuple(n=8, d=6, k=3, noise=0.6, seed=0):
    g = torch.Generator().manual_seed(seed)
    query = torch.randn(n, d, generator=g, dtype=F64)
    positive = query + noise * torch.randn(n, d, generator=g, dtype=F64)
    negatives = query + 1.0 * torch.randn(k, n, d, generator=g, dtype=F64)
    return query, positive, negatives


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("ratio", [0.9, 0.7, None])
def test_superfeature_matching_and_loss_match_naive_loops(seed, ratio):
    query, positive, negatives = _tuple(seed=seed)
    kept = naive_match(query, positive, ratio)
    out = superfeature_loss(query, positive, negatives, ratio=ratio, return_matches=True)
    assert out.matches.tolist() == kept
    assert torch.equal(match_for_loss(query, positive, ratio=ratio), out.matches)
    expected = naive_superfeature_loss(query, positive, negatives, kept, margin=1.1)
    assert out.loss.item() == pytest.approx(expected, abs=1e-10)


def test_superfeature_tests_cover_kept_and_dropped_matches():
    # guard for the test above: the random tuples do exercise both outcomes of the ratio test
    counts = [len(naive_match(*_tuple(seed=s)[:2], 0.9)) for s in range(8)]
    no_ratio = [len(naive_match(*_tuple(seed=s)[:2], None)) for s in range(8)]
    assert sum(counts) > 0 and sum(counts) < sum(no_ratio)


def test_superfeature_margin_is_used():
    query, positive, negatives = _tuple(seed=3)
    kept = naive_match(query, positive, 0.9)
    for margin in (0.5, 1.1, 1.8):
        loss = superfeature_loss(query, positive, negatives, margin=margin)
        assert loss.item() == pytest.approx(
            naive_superfeature_loss(query, positive, negatives, kept, margin), abs=1e-10
        )


def _e(i, d=8):
    v = torch.zeros(d, dtype=F64)
    v[i] = 1.0
    return v


def test_ratio_test_uses_second_neighbour_distance_not_its_index_rejects_ambiguous_match():
    # q0's two nearest positives are p0 and p3, almost equally far: ambiguous (ratio ≈ 0.97).
    # The published bug divides d1 ≈ 0.53 by the index 3 of the second neighbour and keeps it.
    query = torch.stack([_e(0), _e(1), _e(2), _unit(_e(3) + _e(6))])
    positive = torch.stack([_unit(_e(0) + 0.55 * _e(4)), _e(1), _e(2), _unit(_e(0) + 0.57 * _e(5))])
    assert 0 in naive_match(query, positive, 0.9, buggy=True)
    assert 0 not in naive_match(query, positive, 0.9)
    matches = match_for_loss(query, positive, ratio=0.9)
    assert 0 not in matches.tolist()
    assert matches.tolist() == naive_match(query, positive, 0.9)
    assert 0 in match_for_loss(query, positive, ratio=None).tolist()  # only the ratio test drops it


def test_ratio_test_uses_second_neighbour_distance_not_its_index_keeps_distinctive_match():
    # q0's nearest positive p0 is at distance 1.0, the second one (p1, index 1) at ≈ 1.35:
    # d1/d2 ≈ 0.74 passes; the published bug computes d1/1 = 1.0 > 0.9 and drops it.
    p0 = 0.5 * _e(0) + math.sqrt(0.75) * _e(4)  # 60 degrees from e0: chord 1.0
    query = torch.stack([_e(0), _e(1), _e(2), _e(3)])
    positive = torch.stack([p0, _unit(_e(1) + 0.1 * _e(0)), _e(2), _e(3)])
    assert 0 not in naive_match(query, positive, 0.9, buggy=True)
    assert 0 in naive_match(query, positive, 0.9)
    matches = match_for_loss(query, positive, ratio=0.9)
    assert matches.tolist() == naive_match(query, positive, 0.9) == [0, 1, 2, 3]


def test_same_index_filter_drops_reciprocal_matches_between_different_templates():
    g = torch.Generator().manual_seed(0)
    query = torch.randn(6, 16, generator=g, dtype=F64)
    perm = torch.tensor([0, 2, 1, 3, 5, 4])  # positive j is query perm[j]
    positive = query[perm] + 1e-3 * torch.randn(6, 16, generator=g, dtype=F64)
    assert naive_match(query, positive, None) == [0, 3]
    assert match_for_loss(query, positive, ratio=0.9).tolist() == [0, 3]


def test_no_match_gives_zero_loss_with_gradient():
    query = torch.eye(4, dtype=F64).requires_grad_()
    positive = torch.eye(4, dtype=F64)[[1, 2, 3, 0]].requires_grad_()  # exact, but shifted
    negatives = torch.eye(4, dtype=F64).expand(2, 4, 4).clone().requires_grad_()
    out = superfeature_loss(query, positive, negatives, return_matches=True)
    assert out.matches.numel() == 0
    assert out.loss.item() == 0.0 and out.loss.requires_grad
    out.loss.backward()
    for t in (query, positive, negatives):
        assert t.grad is not None and torch.count_nonzero(t.grad) == 0


def test_superfeature_loss_is_summed_over_matches_not_averaged():
    query, positive, negatives = _tuple(seed=1, noise=0.05)
    out = superfeature_loss(query, positive, negatives, return_matches=True)
    per_match = [
        superfeature_loss(query, positive, negatives, matches=torch.tensor([n]))
        for n in out.matches
    ]
    assert len(per_match) > 1
    assert out.loss.item() == pytest.approx(float(sum(per_match)), abs=1e-12)


def test_superfeature_gradcheck_with_fixed_matches():
    query, positive, negatives = _tuple(n=5, d=4, k=2, noise=0.1, seed=2)
    matches = match_for_loss(query, positive)
    assert matches.numel() >= 2
    inputs = tuple(t.clone().requires_grad_() for t in (query, positive, negatives))

    def fixed(q, p, neg):
        return superfeature_loss(q, p, neg, matches=matches)

    def rematched(q, p, neg):  # perturbations are far too small to change the matching
        return superfeature_loss(q, p, neg)

    assert torch.autograd.gradcheck(fixed, inputs)
    assert torch.autograd.gradcheck(rematched, inputs)
    # the negative terms are active in this tuple, so their gradient is exercised
    q = torch.nn.functional.normalize(query, dim=1)[matches]
    neg = torch.nn.functional.normalize(negatives, dim=2)[:, matches]
    assert ((q - neg).norm(dim=-1) < 1.1).any()


def test_superfeature_matching_has_no_gradient_but_loss_does():
    query, positive, negatives = (t.clone().requires_grad_() for t in _tuple(seed=4, noise=0.1))
    matches = match_for_loss(query, positive)
    assert not matches.requires_grad
    out = superfeature_loss(query, positive, negatives, return_matches=True)
    out.loss.backward()
    assert query.grad.abs().sum() > 0


def test_superfeature_module_matches_functional():
    query, positive, negatives = _tuple(seed=5)
    module = SuperFeatureLoss(margin=1.0, ratio=0.8)
    expected = superfeature_loss(
        query, positive, negatives, margin=1.0, ratio=0.8, return_matches=True
    )
    assert torch.equal(module(query, positive, negatives), expected.loss)
    got = module(query, positive, negatives, return_matches=True)
    assert torch.equal(got.matches, expected.matches)


def test_superfeature_loss_rejects_bad_shapes():
    q = torch.randn(4, 3)
    with pytest.raises(ValueError):
        superfeature_loss(q, torch.randn(5, 3), torch.randn(2, 4, 3))
    with pytest.raises(ValueError):
        superfeature_loss(q, q, torch.randn(4, 3))  # negatives need a K axis
    with pytest.raises(ValueError):
        superfeature_loss(q, q, torch.randn(2, 5, 3))
    with pytest.raises(ValueError):
        superfeature_loss(q, q, torch.randn(2, 4, 3), matches=torch.tensor([4]))
    with pytest.raises(ValueError):
        match_for_loss(q[None], q[None])


def test_superfeature_loss_without_negatives_and_single_template():
    query, positive, _ = _tuple(seed=6, noise=0.05)
    empty = torch.zeros(0, *query.shape, dtype=F64)
    kept = naive_match(query, positive, 0.9)
    loss = superfeature_loss(query, positive, empty)
    assert loss.item() == pytest.approx(naive_superfeature_loss(query, positive, empty, kept, 1.1))
    # a single template has no second neighbour: the ratio test cannot reject it
    assert match_for_loss(query[:1], positive[:1]).tolist() == [0]


# ------------------------------------------------------------------------ distances


def test_pairwise_distance_matches_loops_and_has_finite_gradient_on_diagonal():
    x, _ = _embeddings(6, 3)
    y, _ = _embeddings(4, 3, seed=1)
    d = pairwise_l2_distance(x, y)
    for i in range(6):
        for j in range(4):
            assert d[i, j].item() == pytest.approx(_dist(x[i], y[j]), abs=1e-12)
    xs = x.clone().requires_grad_()
    dd = pairwise_l2_distance(xs)
    assert torch.count_nonzero(dd.diagonal()) == 0
    dd.sum().backward()
    assert torch.isfinite(xs.grad).all()
    assert torch.allclose(pairwise_l2_distance(x, squared=True), torch.cdist(x, x) ** 2, atol=1e-12)


# ---------------------------------------------------------------------- contrastive


def naive_tuple_contrastive(anchor, others, labels, margin):
    a = _unit(anchor)
    total = 0.0
    for x, y in zip(others, labels, strict=True):
        d = _dist(a, _unit(x))
        total += 0.5 * d * d if int(y) == 1 else 0.5 * max(0.0, margin - d) ** 2
    return total


def test_tuple_contrastive_matches_naive_loops():
    g = torch.Generator().manual_seed(0)
    anchor = torch.randn(5, generator=g, dtype=F64)
    others = anchor + torch.randn(7, 5, generator=g, dtype=F64)
    labels = torch.tensor([1, 0, 0, 0, 1, 0, 0])
    for margin in (0.7, 1.2):
        expected = naive_tuple_contrastive(anchor, others, labels, margin)
        assert contrastive_loss(anchor, others, labels, margin).item() == pytest.approx(
            expected, abs=1e-12
        )
        mean = contrastive_loss(anchor, others, labels.bool(), margin, reduction="mean")
        assert mean.item() == pytest.approx(expected / 7, abs=1e-12)


def test_batched_tuple_contrastive_is_sum_of_tuples():
    g = torch.Generator().manual_seed(1)
    anchor = torch.randn(3, 4, generator=g, dtype=F64)
    others = torch.randn(3, 6, 4, generator=g, dtype=F64)
    labels = torch.zeros(3, 6, dtype=torch.long)
    labels[:, 0] = 1
    expected = sum(naive_tuple_contrastive(anchor[b], others[b], labels[b], 0.7) for b in range(3))
    assert contrastive_loss(anchor, others, labels).item() == pytest.approx(expected, abs=1e-12)
    assert torch.equal(
        ContrastiveLoss(0.7)(anchor, others, labels), contrastive_loss(anchor, others, labels)
    )


def test_tuple_contrastive_without_normalisation_uses_raw_distances():
    anchor = torch.tensor([0.0, 0.0], dtype=F64)
    others = torch.tensor([[3.0, 4.0], [0.3, 0.4]], dtype=F64)
    loss = contrastive_loss(anchor, others, torch.tensor([1, 0]), 1.0, normalize=False)
    assert loss.item() == pytest.approx(0.5 * 25 + 0.5 * 0.5**2)


def naive_pairwise_contrastive(x, labels, margin):
    xs = [_unit(v) for v in x]
    terms = []
    for i in range(len(xs)):
        for j in range(i + 1, len(xs)):
            d = _dist(xs[i], xs[j])
            terms.append(0.5 * d * d if labels[i] == labels[j] else 0.5 * max(0.0, margin - d) ** 2)
    return sum(terms) / len(terms), sum(terms)


def test_pairwise_contrastive_matches_naive_loops():
    x, labels = _embeddings(9, 3, classes=3)
    for margin in (0.5, 1.3):
        mean, total = naive_pairwise_contrastive(x, labels.tolist(), margin)
        assert pairwise_contrastive_loss(x, labels, margin).item() == pytest.approx(mean, abs=1e-12)
        got = PairwiseContrastiveLoss(margin, reduction="sum")(x, labels)
        assert got.item() == pytest.approx(total, abs=1e-12)


def test_contrastive_gradcheck():
    g = torch.Generator().manual_seed(2)
    anchor = torch.randn(2, 3, generator=g, dtype=F64).requires_grad_()
    others = torch.randn(2, 4, 3, generator=g, dtype=F64).requires_grad_()
    labels = torch.tensor([[1, 0, 0, 0], [0, 1, 0, 0]])
    assert torch.autograd.gradcheck(
        lambda a, o: contrastive_loss(a, o, labels, 1.2), (anchor, others)
    )
    x, y = _embeddings(6, 3, classes=2, seed=3)
    x.requires_grad_()
    assert torch.autograd.gradcheck(lambda e: pairwise_contrastive_loss(e, y, 1.2), (x,))


def test_contrastive_rejects_bad_inputs():
    with pytest.raises(ValueError):
        contrastive_loss(torch.randn(4), torch.randn(3, 5), torch.tensor([1, 0, 0]))
    with pytest.raises(ValueError):
        contrastive_loss(torch.randn(4), torch.randn(3, 4), torch.tensor([1, 0]))
    with pytest.raises(ValueError):
        contrastive_loss(torch.randn(4), torch.randn(3, 4), torch.tensor([1, 2, 0]))
    with pytest.raises(ValueError):
        contrastive_loss(
            torch.randn(4), torch.randn(3, 4), torch.tensor([1, 0, 0]), reduction="max"
        )
    with pytest.raises(ValueError):
        pairwise_contrastive_loss(torch.randn(4, 3), torch.tensor([0, 1, 1]))
    with pytest.raises(ValueError):
        pairwise_contrastive_loss(torch.randn(4, 3), torch.rand(4))  # float labels


# -------------------------------------------------------------------------- triplet


def naive_triplets(d, labels, mining, margin):
    """Mined triplets by explicit loops over the distance table ``d`` (list of lists)."""
    b = len(labels)
    out = []
    if mining == "all":
        for a in range(b):
            for p in range(b):
                for n in range(b):
                    if a != p and labels[a] == labels[p] and labels[n] != labels[a]:
                        out.append((a, p, n))
    elif mining == "batch_hard":
        for a in range(b):
            pos = [p for p in range(b) if p != a and labels[p] == labels[a]]
            neg = [n for n in range(b) if labels[n] != labels[a]]
            if pos and neg:
                out.append((a, max(pos, key=lambda p: d[a][p]), min(neg, key=lambda n: d[a][n])))
    else:
        for a in range(b):
            for p in range(b):
                if a == p or labels[a] != labels[p]:
                    continue
                band = [
                    n
                    for n in range(b)
                    if labels[n] != labels[a] and d[a][p] < d[a][n] < d[a][p] + margin
                ]
                if band:
                    out.append((a, p, min(band, key=lambda n: d[a][n])))
    return out


def naive_triplet_loss(x, labels, mining, margin):
    xs = [_unit(v) for v in x]
    d = [[_dist(u, v) for v in xs] for u in xs]
    trip = naive_triplets(d, labels, mining, margin)
    if not trip:
        return 0.0, 0
    return sum(max(0.0, d[a][p] - d[a][n] + margin) for a, p, n in trip) / len(trip), len(trip)


@pytest.mark.parametrize("mining", ["semihard", "batch_hard", "all"])
@pytest.mark.parametrize("margin", [0.1, 0.3])
@pytest.mark.parametrize("seed", range(3))
def test_triplet_margin_loss_matches_naive_loops(mining, margin, seed):
    x, labels = _embeddings(10, 3, classes=3, seed=seed)
    expected, count = naive_triplet_loss(x, labels.tolist(), mining, margin)
    assert count > 0
    got = triplet_margin_loss(x, labels, margin, mining)
    assert got.item() == pytest.approx(expected, abs=1e-12)
    assert torch.equal(TripletMarginLoss(margin, mining)(x, labels), got)


def test_triplet_without_triplets_is_zero_with_gradient():
    x = torch.randn(4, 3, dtype=F64, requires_grad=True)
    for mining in ("semihard", "batch_hard", "all"):
        loss = triplet_margin_loss(x, torch.arange(4), mining=mining)  # no positive pair
        assert loss.item() == 0.0 and loss.requires_grad
        loss.backward()


@pytest.mark.parametrize("mining", ["semihard", "batch_hard", "all"])
def test_triplet_gradcheck(mining):
    x, labels = _embeddings(8, 3, classes=2, seed=4)
    assert naive_triplet_loss(x, labels.tolist(), mining, 0.3)[1] > 0
    x.requires_grad_()
    assert torch.autograd.gradcheck(lambda e: triplet_margin_loss(e, labels, 0.3, mining), (x,))


def test_triplet_rejects_bad_inputs():
    with pytest.raises(ValueError):
        triplet_margin_loss(torch.randn(4, 3), torch.arange(4), mining="hardest")
    with pytest.raises(ValueError):
        triplet_margin_loss(torch.randn(4, 3, 2), torch.arange(4))
    with pytest.raises(ValueError):
        TripletMarginLoss(mining="easy")


# --------------------------------------------------------------------------- margin


def naive_margin_loss(x, labels, beta, alpha, nu, pos_pairs, neg_pairs):
    xs = [_unit(v) for v in x]

    def b(a):
        return float(beta[labels[a]]) if beta.dim() == 1 else float(beta)

    terms, reg = [], 0.0
    for a, p in pos_pairs:
        terms.append(max(0.0, alpha + _dist(xs[a], xs[p]) - b(a)))
        reg += nu * b(a)
    for a, n in neg_pairs:
        terms.append(max(0.0, alpha - _dist(xs[a], xs[n]) + b(a)))
    return (sum(terms) + reg) / max(1, sum(t > 0 for t in terms))


@pytest.mark.parametrize(
    "beta", [torch.tensor(1.2, dtype=F64), torch.tensor([1.0, 1.3, 0.9], dtype=F64)]
)
def test_margin_loss_all_pairs_matches_naive_loops(beta):
    x, labels = _embeddings(9, 4, classes=3, seed=5)
    lab = labels.tolist()
    pos = [(a, p) for a in range(9) for p in range(9) if a != p and lab[a] == lab[p]]
    neg = [(a, n) for a in range(9) for n in range(9) if lab[a] != lab[n]]
    for nu in (0.0, 0.1):
        expected = naive_margin_loss(x, lab, beta, 0.2, nu, pos, neg)
        got = margin_loss(x, labels, beta, alpha=0.2, nu=nu, sampling="all")
        assert got.item() == pytest.approx(expected, abs=1e-12)


def test_margin_loss_distance_weighted_uses_one_sampled_negative_per_positive_pair():
    x, labels = _embeddings(12, 4, classes=3, seed=6)
    beta = torch.tensor(1.2, dtype=F64)
    got = margin_loss(x, labels, beta, generator=torch.Generator().manual_seed(7))
    dist = pairwise_l2_distance(torch.nn.functional.normalize(x, dim=1))
    a, p, n = distance_weighted_triplets(
        dist, labels, 4, generator=torch.Generator().manual_seed(7)
    )
    assert len(a) == 12 * 3  # every ordered positive pair: 3 classes of 4
    pos = list(zip(a.tolist(), p.tolist(), strict=True))
    neg = list(zip(a.tolist(), n.tolist(), strict=True))
    expected = naive_margin_loss(x, labels.tolist(), beta, 0.2, 0.0, pos, neg)
    assert got.item() == pytest.approx(expected, abs=1e-12)


def test_margin_loss_gradcheck_including_beta():
    x, labels = _embeddings(6, 3, classes=2, seed=8)
    x.requires_grad_()
    beta = torch.tensor([1.1, 1.25], dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda e, b: margin_loss(e, labels, b, nu=0.05, sampling="all"), (x, beta)
    )


def test_margin_module_learns_beta_per_class():
    x, labels = _embeddings(8, 4, classes=2, seed=9)
    module = MarginLoss(num_classes=2, sampling="all").double()
    assert module.beta.shape == (2,)
    module(x, labels).backward()
    assert module.beta.grad is not None and torch.count_nonzero(module.beta.grad) > 0
    with pytest.raises(ValueError):
        module(x, labels + 1)  # label 2 has no beta
    with pytest.raises(ValueError):
        MarginLoss(sampling="semihard")
