"""GeM pooling against its formula, its limits (average and max pooling) and gradcheck."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lit.metric import GeM, gem


def test_gem_matches_naive_formula():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 4, 5, generator=g, dtype=torch.float64)  # negatives are clamped to eps
    p, eps = 2.5, 1e-6
    out = gem(x, p, eps)
    for b in range(2):
        for c in range(3):
            vals = [max(float(v), eps) ** p for v in x[b, c].flatten()]
            expected = (sum(vals) / len(vals)) ** (1 / p)
            assert out[b, c].item() == pytest.approx(expected, rel=1e-12)


def test_gem_with_p_one_is_average_pooling():
    x = torch.rand(3, 8, 7, 6) + 0.01
    assert torch.allclose(gem(x, 1.0), F.adaptive_avg_pool2d(x, 1).flatten(1), atol=1e-6)


def test_gem_large_p_approaches_max_pooling():
    x = torch.rand(2, 4, 5, 5) + 0.1
    assert torch.allclose(gem(x, 200.0), x.amax(dim=(2, 3)), rtol=0.02)


def test_gem_gradcheck_input_and_exponent():
    x = (torch.rand(2, 3, 3, 3, dtype=torch.float64) + 0.1).requires_grad_()
    p = torch.tensor(3.0, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: gem(a, b), (x, p))


def test_gem_module_learns_p_and_rejects_bad_input():
    pool = GeM()
    assert isinstance(pool.p, torch.nn.Parameter) and pool.p.item() == 3.0 and pool.eps == 1e-6
    pool(torch.rand(2, 3, 4, 4)).sum().backward()
    assert pool.p.grad is not None
    assert "p" in dict(GeM(trainable=False).named_buffers())
    with pytest.raises(ValueError):
        pool(torch.rand(3, 4, 4))
    with pytest.raises(ValueError):
        GeM(p=0.0)
