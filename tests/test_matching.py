"""Tests of lit.matching: reciprocal nearest-neighbour matching of super-features."""

import itertools
import math

import numpy as np
import pytest
import torch

import lit
from lit.matching import SuperFeatureMatcher, background_similarity, match, match_superfeatures
from lit.types import LocalFeatures, Matches, SuperFeatures

# ---------------------------------------------------------------------------------------
# Brute-force reference: explicit loops over all pairs, no vectorisation.
# ---------------------------------------------------------------------------------------


def reference_match(a, b, threshold, ratio):
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    na, nb = len(a), len(b)
    if na == 0 or nb == 0:
        return [], [], []

    def unit(v):
        n = math.sqrt(sum(float(x) * float(x) for x in v))
        return [float(x) / max(n, 1e-12) for x in v]

    ua = [unit(v) for v in a]
    ub = [unit(v) for v in b]
    sim = [
        [sum(x * y for x, y in zip(ua[i], ub[j], strict=True)) for j in range(nb)]
        for i in range(na)
    ]

    def dist(s):
        return math.sqrt(max(2.0 - 2.0 * s, 0.0))

    # nearest neighbours, first (lowest) index on ties: only a strictly larger value replaces
    nn_ab = []
    for i in range(na):
        best_j = 0
        for j in range(1, nb):
            if sim[i][j] > sim[i][best_j]:
                best_j = j
        nn_ab.append(best_j)
    nn_ba = []
    for j in range(nb):
        best_i = 0
        for i in range(1, na):
            if sim[i][j] > sim[best_i][j]:
                best_i = i
        nn_ba.append(best_i)

    def ratio_ok(dists):
        if len(dists) < 2:
            return True
        d1, d2 = sorted(dists)[:2]
        r = 1.0 if d2 == 0 else d1 / d2
        return r <= ratio

    out = []
    for i in range(na):
        j = nn_ab[i]
        if nn_ba[j] != i:
            continue
        if threshold is not None and not sim[i][j] >= threshold:
            continue
        if ratio is not None:
            row = [dist(sim[i][k]) for k in range(nb)]
            col = [dist(sim[k][j]) for k in range(na)]
            if not (ratio_ok(row) and ratio_ok(col)):
                continue
        out.append((i, j, sim[i][j]))
    out.sort(key=lambda t: (-t[2], t[0]))
    return [t[0] for t in out], [t[1] for t in out], [t[2] for t in out]


def random_pair(na, nb, dim, noise, seed):
    """b holds noisy, shuffled copies of part of a, plus random distractors."""
    g = np.random.default_rng(seed)
    a = g.standard_normal((na, dim))
    n_common = min(na, nb) // 2
    copies = a[g.permutation(na)[:n_common]] + noise * g.standard_normal((n_common, dim))
    b = np.concatenate([copies, g.standard_normal((nb - n_common, dim))])
    b = b[g.permutation(nb)] * g.uniform(0.5, 2.0, size=(nb, 1))  # norms must not matter
    return a, b


SIZES = [(0, 5), (5, 0), (0, 0), (1, 1), (1, 6), (6, 1), (2, 2), (25, 40), (60, 30)]
THRESHOLDS = [None, 0.0, 0.8, 0.9, 0.97]
RATIOS = [None, 0.5, 0.8, 0.95, 1.0, 1.5]


@pytest.mark.parametrize("na,nb", SIZES)
@pytest.mark.parametrize("noise", [0.05, 0.3])
def test_matches_brute_force_reference_for_every_option(na, nb, noise):
    a, b = random_pair(na, nb, 6, noise, seed=na * 100 + nb + int(noise * 10))
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    n_checked = 0
    for threshold, ratio in itertools.product(THRESHOLDS, RATIOS):
        ia, ib, s = match_superfeatures(ta, tb, threshold=threshold, ratio=ratio)
        ra, rb, rs = reference_match(a, b, threshold, ratio)
        assert ia.tolist() == ra, (threshold, ratio)
        assert ib.tolist() == rb, (threshold, ratio)
        np.testing.assert_allclose(
            s.numpy(), np.asarray(rs, dtype=np.float64).reshape(-1), atol=1e-12
        )
        assert ia.dtype == torch.int64 and ib.dtype == torch.int64
        n_checked += len(ra)
    if min(na, nb) >= 25:
        assert n_checked > 0  # the random data does produce matches


def test_float32_inputs_agree_with_reference():
    a, b = random_pair(40, 50, 8, 0.1, seed=7)
    ia, ib, s = match_superfeatures(
        torch.from_numpy(a).float(), torch.from_numpy(b).float(), ratio=0.9
    )
    ra, rb, rs = reference_match(a.astype(np.float32), b.astype(np.float32), 0.9, 0.9)
    assert ia.tolist() == ra and ib.tolist() == rb and len(ra) > 0
    assert s.dtype == torch.float32
    np.testing.assert_allclose(s.numpy(), rs, atol=1e-6)


def test_match_is_symmetric_without_ties():
    a, b = random_pair(30, 35, 6, 0.1, seed=3)
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    ia, ib, s = match_superfeatures(ta, tb, threshold=0.5, ratio=0.9)
    jb, ja, s2 = match_superfeatures(tb, ta, threshold=0.5, ratio=0.9)
    assert sorted(zip(ia.tolist(), ib.tolist(), strict=True)) == sorted(
        zip(ja.tolist(), jb.tolist(), strict=True)
    )
    torch.testing.assert_close(s, s2)


def test_results_sorted_by_decreasing_similarity():
    a, b = random_pair(50, 50, 6, 0.2, seed=11)
    _, _, s = match_superfeatures(torch.from_numpy(a), torch.from_numpy(b), threshold=None)
    assert len(s) > 5
    assert bool((s[:-1] >= s[1:]).all())


def test_descriptor_norms_do_not_matter():
    a, b = random_pair(20, 20, 5, 0.1, seed=5)
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    r1 = match_superfeatures(ta, tb, threshold=0.5)
    r2 = match_superfeatures(ta * 7.0, tb * 0.01, threshold=0.5)
    for x, y in zip(r1, r2, strict=True):
        torch.testing.assert_close(x, y)


# ---------------------------------------------------------------------------------------
# Hand-written 2-D cases.
# ---------------------------------------------------------------------------------------


def deg(*angles):
    """Unit 2-D vectors at the given angles (degrees), as a float64 tensor."""
    r = np.radians(angles)
    return torch.tensor(np.stack([np.cos(r), np.sin(r)], axis=1))


def pairs(result):
    ia, ib, _ = result
    return list(zip(ia.tolist(), ib.tolist(), strict=True))


def test_clear_match_is_found():
    a = torch.tensor([[1.0, 0.0]])
    b = torch.tensor([[0.0, 1.0], [1.0, 0.01]])
    ia, ib, s = match_superfeatures(a, b)
    assert pairs((ia, ib, s)) == [(0, 1)]
    assert s.item() == pytest.approx(1.0 / math.sqrt(1.0001), abs=1e-6)


def test_non_reciprocal_match_is_rejected():
    # a0 (0 deg) and a1 (10 deg) both prefer b0 (8 deg), but b0 prefers a1.
    a, b = deg(0.0, 10.0), deg(8.0)
    assert pairs(match_superfeatures(a, b)) == [(1, 0)]
    assert pairs(match_superfeatures(a[:1], b)) == [(0, 0)]  # alone, a0 is matched


def test_below_threshold_match_is_rejected():
    a = torch.tensor([[1.0, 0.0]])
    b = torch.tensor([[0.6, 0.8]])  # cosine 0.6
    assert pairs(match_superfeatures(a, b)) == []
    assert pairs(match_superfeatures(a, b, threshold=0.6)) == [(0, 0)]  # >= threshold
    assert pairs(match_superfeatures(a, b, threshold=None)) == [(0, 0)]


def test_ratio_test_rejects_ambiguous_match():
    # b0 at +5 deg and b1 at -6 deg are both close to a0: d1/d2 = sin(2.5)/sin(3) ~ 0.833
    a, b = deg(0.0), deg(5.0, -6.0)
    expected = math.sin(math.radians(2.5)) / math.sin(math.radians(3.0))
    assert pairs(match_superfeatures(a, b)) == [(0, 0)]
    assert pairs(match_superfeatures(a, b, ratio=expected + 1e-6)) == [(0, 0)]
    assert pairs(match_superfeatures(a, b, ratio=expected - 1e-6)) == []
    assert pairs(match_superfeatures(a, b, ratio=0.8)) == []


def test_ratio_test_applies_in_both_directions():
    # a0 (0 deg) -> b0 (2 deg) is unambiguous from a's side (b1 is at 90 deg), but from
    # b0's side a0 (2 deg away) and a1 (2.5 deg away) are ambiguous: ratio ~ 0.8.
    a, b = deg(0.0, 4.5), deg(2.0, 90.0)
    expected = math.sin(math.radians(1.0)) / math.sin(math.radians(1.25))
    assert pairs(match_superfeatures(a, b, threshold=0.5)) == [(0, 0)]
    assert pairs(match_superfeatures(a, b, threshold=0.5, ratio=expected + 1e-6)) == [(0, 0)]
    assert pairs(match_superfeatures(a, b, threshold=0.5, ratio=expected - 1e-6)) == []
    # swapping the inputs gives the same decision
    assert pairs(match_superfeatures(b, a, threshold=0.5, ratio=expected - 1e-6)) == []


def test_single_candidate_passes_ratio_test():
    a, b = deg(0.0), deg(3.0)
    assert pairs(match_superfeatures(a, b, ratio=0.01)) == [(0, 0)]


def test_exact_ties_pick_lowest_index():
    # duplicate vectors in b: a0 goes to b0
    a = torch.tensor([[1.0, 0.0]])
    b = torch.tensor([[3.0, 0.0], [1.0, 0.0]])
    assert pairs(match_superfeatures(a, b)) == [(0, 0)]
    # duplicate directions in a (different norms): b0 goes to a0
    assert pairs(match_superfeatures(b, a)) == [(0, 0)]
    # symmetric tie at +-10 deg: the lower index wins
    a, b = deg(0.0), deg(10.0, -10.0)
    assert pairs(match_superfeatures(a, b, threshold=0.9)) == [(0, 0)]
    assert pairs(match_superfeatures(a, deg(-10.0, 10.0), threshold=0.9)) == [(0, 0)]


def test_exact_ties_have_ratio_one():
    a, b = deg(0.0), deg(10.0, -10.0)  # d1 == d2 > 0
    assert pairs(match_superfeatures(a, b, ratio=1.0)) == [(0, 0)]
    assert pairs(match_superfeatures(a, b, ratio=0.999)) == []
    a, b = deg(0.0), deg(0.0, 0.0)  # d1 == d2 == 0
    assert pairs(match_superfeatures(a, b, ratio=1.0)) == [(0, 0)]
    assert pairs(match_superfeatures(a, b, ratio=0.999)) == []


def test_equal_similarities_keep_index_order():
    a = deg(0.0, 90.0, 180.0)
    b = deg(180.0, 90.0, 0.0)
    ia, ib, s = match_superfeatures(a, b)
    assert ia.tolist() == [0, 1, 2] and ib.tolist() == [2, 1, 0]
    torch.testing.assert_close(s, torch.ones(3, dtype=torch.float64))


@pytest.mark.parametrize("na,nb", [(0, 3), (3, 0), (0, 0)])
@pytest.mark.parametrize("ratio", [None, 0.9])
def test_empty_inputs_give_empty_results(na, nb, ratio):
    ia, ib, s = match_superfeatures(torch.zeros(na, 2), torch.ones(nb, 2), ratio=ratio)
    assert ia.shape == ib.shape == s.shape == (0,)
    assert ia.dtype == ib.dtype == torch.int64 and s.dtype == torch.float32
    m = match(torch.zeros(na, 2), torch.ones(nb, 2), ratio=ratio)
    assert len(m) == 0 and m.score == 0.0
    assert m.scales_a.shape == m.scales_b.shape == (0,)


def test_zero_vector_has_zero_similarity():
    a = torch.tensor([[0.0, 0.0], [1.0, 0.0]])
    b = torch.tensor([[1.0, 0.0]])
    assert pairs(match_superfeatures(a, b, threshold=None)) == [(1, 0)]


def test_similarity_is_differentiable():
    a = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    b = (a.detach() + 0.01 * torch.randn(6, 4, dtype=torch.float64)).requires_grad_()
    _, _, s = match_superfeatures(a, b)
    s.sum().backward()
    assert a.grad is not None and b.grad is not None


# ---------------------------------------------------------------------------------------
# lit.match on the result types, the module wrapper, and input checks.
# ---------------------------------------------------------------------------------------


def local_features(desc, scales):
    k = desc.shape[0]
    return LocalFeatures(
        descriptors=desc,
        strengths=torch.linspace(2.0, 1.0, k),
        scales=torch.as_tensor(scales, dtype=torch.float32),
        superfeature_ids=torch.arange(k),
    )


def test_match_local_features_fills_scales():
    da, db = deg(0.0, 45.0, 90.0).float(), deg(91.0, 1.0).float()
    fa = local_features(da, [1.0, 0.5, 2.0])
    fb = local_features(db, [0.707, 1.414])
    m = match(fa, fb)
    assert isinstance(m, Matches)
    assert sorted(zip(m.indices_a.tolist(), m.indices_b.tolist(), strict=True)) == [(0, 1), (2, 0)]
    for k in range(len(m)):
        assert m.scales_a[k] == fa.scales[m.indices_a[k]]
        assert m.scales_b[k] == fb.scales[m.indices_b[k]]
    assert m.score == pytest.approx(float(m.similarity.sum()))
    assert m.score == pytest.approx(2 * math.cos(math.radians(1.0)), abs=1e-6)


def test_match_superfeatures_repeats_scale_and_mixes_types():
    da, db = deg(0.0, 90.0).float(), deg(89.0, 2.0).float()
    sa = SuperFeatures(da, torch.ones(2), torch.rand(2, 3, 4), scale=0.5)
    sb = SuperFeatures(db, torch.ones(2), torch.rand(2, 3, 4), scale=2.0)
    m = match(sa, sb)
    assert len(m) == 2
    assert m.scales_a.tolist() == [0.5, 0.5] and m.scales_b.tolist() == [2.0, 2.0]
    assert m.indices_a.tolist() == [1, 0] and m.indices_b.tolist() == [0, 1]  # 1 deg before 2 deg
    m2 = match(sa, local_features(db, [1.0, 0.25]))
    assert m2.indices_b.tolist() == [0, 1]
    assert m2.scales_a.tolist() == [0.5, 0.5] and m2.scales_b.tolist() == [1.0, 0.25]


def test_match_raw_tensors_and_arrays():
    a, b = random_pair(20, 25, 6, 0.05, seed=1)
    m1 = match(torch.from_numpy(a), torch.from_numpy(b), threshold=0.8, ratio=0.9)
    m2 = match(a, b, threshold=0.8, ratio=0.9)
    ra, rb, _ = reference_match(a, b, 0.8, 0.9)
    assert m1.indices_a.tolist() == m2.indices_a.tolist() == ra
    assert m1.indices_b.tolist() == m2.indices_b.tolist() == rb
    assert bool((m1.scales_a == 1.0).all()) and bool((m1.scales_b == 1.0).all())


def test_matcher_module_wraps_match():
    a, b = random_pair(20, 25, 6, 0.05, seed=2)
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    matcher = SuperFeatureMatcher(threshold=0.8, ratio=0.9)
    assert isinstance(matcher, torch.nn.Module)
    assert matcher.threshold == 0.8 and matcher.ratio == 0.9
    assert "threshold=0.8" in repr(matcher) and "ratio=0.9" in repr(matcher)
    m1, m2 = matcher(ta, tb), match(ta, tb, threshold=0.8, ratio=0.9)
    for x, y in zip(m1, m2, strict=True):
        torch.testing.assert_close(x, y)
    matcher.ratio = None
    assert len(matcher(ta, tb)) >= len(m1)


def test_lit_match_is_exposed():
    import lit

    a, b = deg(0.0, 90.0).float(), deg(1.0).float()
    assert lit.match(a, b).indices_a.tolist() == [0]


@pytest.mark.parametrize(
    "bad", [[[1.0, 0.0]], (1, 2), "x", None, {"descriptors": torch.ones(1, 2)}]
)
def test_match_rejects_unsupported_types(bad):
    with pytest.raises(TypeError):
        match(bad, torch.ones(2, 2))
    with pytest.raises(TypeError):
        match(torch.ones(2, 2), bad)


def test_functional_core_rejects_non_tensors():
    with pytest.raises(TypeError):
        match_superfeatures(np.ones((2, 2)), torch.ones(2, 2))
    with pytest.raises(TypeError):
        match_superfeatures(torch.ones(2, 2), torch.ones(2, 2, dtype=torch.bool))


def test_dimension_mismatch_raises_value_error():
    with pytest.raises(ValueError, match="dimension"):
        match_superfeatures(torch.ones(3, 4), torch.ones(3, 5))
    with pytest.raises(ValueError):
        match(local_features(torch.ones(2, 4), [1.0, 1.0]), torch.ones(2, 3))


@pytest.mark.parametrize("shape", [(4,), (2, 3, 4), ()])
def test_non_matrix_inputs_raise_value_error(shape):
    with pytest.raises(ValueError):
        match_superfeatures(torch.ones(shape), torch.ones(2, 4))


def test_non_finite_descriptors_raise_value_error():
    a = torch.tensor([[1.0, float("nan")]])
    with pytest.raises(ValueError, match="NaN"):
        match_superfeatures(a, torch.ones(2, 2))


@pytest.mark.parametrize("ratio", [0.0, -0.5, float("nan")])
def test_invalid_ratio_raises_value_error(ratio):
    with pytest.raises(ValueError):
        match_superfeatures(torch.ones(2, 2), torch.ones(2, 2), ratio=ratio)
    with pytest.raises(ValueError):
        SuperFeatureMatcher(ratio=ratio)


def test_invalid_threshold_raises():
    with pytest.raises(ValueError):
        match_superfeatures(torch.ones(2, 2), torch.ones(2, 2), threshold=float("nan"))
    with pytest.raises(TypeError):
        match_superfeatures(torch.ones(2, 2), torch.ones(2, 2), threshold="0.9")


def test_scales_length_mismatch_raises_value_error():
    with pytest.raises(ValueError, match="scales"):  # refused when built (lit.types)
        match(LocalFeatures(torch.ones(3, 2), torch.ones(3), torch.ones(2), torch.arange(3)), torch.ones(2, 2))


def test_result_types_keep_namedtuple_helpers():
    from lit.types import LocalFeatures, SuperFeatures

    sf = SuperFeatures(torch.zeros(10, 4), torch.zeros(10), torch.zeros(10, 2, 2))
    assert len(sf) == 10 and sf._replace(scale=2.0).scale == 2.0
    lf = LocalFeatures(torch.zeros(3, 4), torch.zeros(3), torch.ones(3), torch.arange(3))
    assert len(lf) == 3 and lf._replace(scales=torch.zeros(3)).scales.sum() == 0
    with pytest.raises(TypeError, match="fields"):
        LocalFeatures._make([1, 2])


# ---------------------------------------------------------------------------------------
# The background test of the match rule against a brute-force loop, option checks, and the
# background bank a model's rule carries.
# ---------------------------------------------------------------------------------------


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def reference_background_match(a, b, bg, margin):
    """Reciprocal nearest neighbours kept when cos - max(bg best of a_i, bg best of b_j) >= margin,
    written with loops over numpy arrays."""
    a, b, bg = _unit(a), _unit(b), _unit(bg)
    keep = []
    for i in range(len(a)):
        sims = [float(a[i] @ b[j]) for j in range(len(b))]
        j = int(np.argmax(sims))
        back = [float(b[j] @ a[k]) for k in range(len(a))]
        if int(np.argmax(back)) != i:
            continue
        best_bg = max(max(float(a[i] @ g) for g in bg), max(float(b[j] @ g) for g in bg))
        if sims[j] - best_bg >= margin:
            keep.append((i, j, sims[j]))
    return sorted(keep, key=lambda t: -t[2])


def test_background_similarity_against_a_loop():
    rng = np.random.default_rng(0)
    x, bg = rng.normal(size=(9, 5)), rng.normal(size=(23, 5)) * 3
    expected = [max(float(u @ g) for g in _unit(bg)) for u in _unit(x)]
    got = background_similarity(torch.from_numpy(x), torch.from_numpy(bg), chunk=4)  # several chunks
    assert got.dtype == torch.float64 and np.allclose(got.numpy(), expected, atol=1e-12)


@pytest.mark.parametrize("margin", [-0.5, 0.0, 0.05, 0.2])
def test_background_test_equals_brute_force(margin):
    rng = np.random.default_rng(1)
    common = rng.normal(size=(12, 16))  # a and b share noisy copies of these
    a = np.concatenate([common + 0.3 * rng.normal(size=common.shape), rng.normal(size=(8, 16))])
    b = np.concatenate([common + 0.3 * rng.normal(size=common.shape), rng.normal(size=(5, 16))])
    bg = np.concatenate([common[:4] + 0.05 * rng.normal(size=(4, 16)), rng.normal(size=(30, 16))])
    ia, ib, sim = match_superfeatures(torch.from_numpy(a), torch.from_numpy(b), threshold=None,
                                      background=torch.from_numpy(bg), margin=margin)
    expected = reference_background_match(a, b, bg, margin)
    assert [(int(i), int(j)) for i, j in zip(ia, ib)] == [(i, j) for i, j, _ in expected]
    assert np.allclose(sim.numpy(), [s for _, _, s in expected])
    if margin == 0.05:  # the shared features that the background also has are dropped
        assert 0 < len(expected) < 12 and not {0, 1, 2, 3} & {i for i, _, _ in expected}


def test_background_and_threshold_combine():
    rng = np.random.default_rng(2)
    a, b, bg = (torch.from_numpy(rng.normal(size=(n, 8)).astype(np.float32)) for n in (20, 20, 10))
    both = match(a, b, threshold=0.2, background=bg, margin=-0.3)
    only_bg = match(a, b, threshold=None, background=bg, margin=-0.3)
    keep = only_bg.similarity >= 0.2
    assert torch.equal(both.indices_a, only_bg.indices_a[keep])
    assert torch.equal(match(a, b, threshold=None, background=bg.numpy(), margin=-0.3).indices_b, only_bg.indices_b)


def test_background_options_are_checked():
    a = torch.randn(5, 4)
    with pytest.raises(ValueError, match="margin needs a background"):
        match_superfeatures(a, a, margin=0.1)
    with pytest.raises(ValueError, match="needs a margin"):
        match_superfeatures(a, a, background=a)
    with pytest.raises(ValueError, match="dimension 3"):
        match_superfeatures(a, a, background=torch.randn(2, 3), margin=0.1)
    with pytest.raises(ValueError, match="at least one"):
        match_superfeatures(a, a, background=torch.randn(0, 4), margin=0.1)
    with pytest.raises(ValueError, match="-2..2"):
        match_superfeatures(a, a, background=a, margin=float("nan"))
    with pytest.raises(ValueError, match="NaN"):
        match_superfeatures(a, a, background=torch.full((2, 4), float("nan")), margin=0.1)


def test_match_background_is_checked(tiny_model):
    """The background bank of a model's rule (saved in its weights file, whose sha256 the
    registry checks: tests/test_hub.py) must be finite M x D descriptors, with a margin."""
    from lit.matching import MatchRule

    tiny_model.set_match_rule(MatchRule(threshold=None, margin=0.1, background=torch.ones(3, 16)))
    assert tiny_model.match_rule().background.shape == (3, 16)
    with pytest.raises(ValueError, match="M x 16"):
        tiny_model.set_match_rule(MatchRule(threshold=None, margin=0.1, background=torch.ones(3, 5)))
    with pytest.raises(ValueError, match="NaN"):
        MatchRule(threshold=None, margin=0.1, background=torch.full((2, 16), float("nan")))
    with pytest.raises(ValueError, match="go together"):
        MatchRule(threshold=None, margin=0.1)


def test_match_options_are_validated():
    a, b = torch.randn(5, 8), torch.randn(6, 8)
    for kwargs, text in (({"ratio": 0.0}, "ratio must be > 0"), ({"threshold": 1.2}, "would match nothing")):
        with pytest.raises(ValueError, match=text):
            lit.match(a, b, **kwargs)
    with pytest.warns(UserWarning, match="ratio 1.5 > 1 tests nothing"):
        lit.match(a, b, ratio=1.5)
    with pytest.warns(UserWarning, match="threshold -1.0 < 0"):
        assert len(lit.match(a, b, threshold=-1.0)) == len(lit.match(a, b, threshold=None))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(lit.match(a, a, threshold=1.0 - 1e-6, ratio=1.0)) == 5  # the bounds themselves are fine
