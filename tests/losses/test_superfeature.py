"""FIRe's super-feature loss and its matching against naive per-template loops."""

from __future__ import annotations

import math

import pytest
import torch

from lit.losses import SuperFeatureLoss, match_for_loss, safe_sqrt, superfeature_loss

F64 = torch.float64


def _unit(v: torch.Tensor) -> torch.Tensor:
    return v / math.sqrt(float((v * v).sum()))


def _dist(u: torch.Tensor, v: torch.Tensor) -> float:
    return math.sqrt(sum((float(a) - float(b)) ** 2 for a, b in zip(u, v, strict=True)))


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


def test_safe_sqrt_is_the_square_root_with_a_zero_gradient_at_zero():
    squared = torch.tensor([0.0, 1e-13, 0.25, 4.0], dtype=F64, requires_grad=True)
    root = safe_sqrt(squared)
    assert root.tolist() == [0.0, 0.0, 0.5, 2.0]
    root.sum().backward()
    assert squared.grad.tolist() == [0.0, 0.0, 1.0, 0.25]
