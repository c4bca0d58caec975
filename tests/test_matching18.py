"""The background test of the match rule (issue 18): ``lit.matching`` against an independent
brute-force implementation, option checks, and the model's background file checks."""


import numpy as np
import pytest
import torch

from lit.matching import background_similarity, match, match_superfeatures


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _brute(a, b, bg, margin):
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
    expected = _brute(a, b, bg, margin)
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
