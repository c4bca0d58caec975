"""LIT against an explicit-loop implementation of SPEC section 1, step by step."""

import math

import pytest
import torch

from lit.models import LIT, LITConfig


def _layer_norm(x, ln):
    mu = sum(x) / len(x)
    var = sum((v - mu) ** 2 for v in x) / len(x)
    return [(v - mu) / math.sqrt(var + ln.eps) * float(w) + float(b) for v, w, b in zip(x, ln.weight.tolist(), ln.bias.tolist())]


def _linear(x, lin):
    w = lin.weight.tolist()
    b = lin.bias.tolist() if lin.bias is not None else [0.0] * len(w)
    return [sum(wi * xi for wi, xi in zip(row, x)) + bi for row, bi in zip(w, b)]


def naive_lit(module: LIT, fmap: torch.Tensor):
    """Loops over tokens l and templates n, in plain Python floats (float64)."""
    c, h, w = fmap.shape
    cfg = module.cfg
    tokens = [[float(fmap[ch, i, j]) for ch in range(c)] for i in range(h) for j in range(w)]
    tokens = [_layer_norm(t, module.norm_inputs) for t in tokens]
    keys = [_linear(t, module.project_k) for t in tokens]
    values = [_linear(t, module.project_v) for t in tokens]
    templates = module.templates_init[0].tolist()
    L, N, D = len(tokens), cfg.N, cfg.dim
    for _ in range(cfg.T):
        prev = [row[:] for row in templates]
        q = [[v / math.sqrt(D) for v in _linear(_layer_norm(t, module.norm_templates), module.project_q)] for t in templates]
        a = []
        for l in range(L):
            logits = [sum(kv * qv for kv, qv in zip(keys[l], q[n])) for n in range(N)]
            mx = max(logits)
            e = [math.exp(z - mx) for z in logits]
            s = sum(e)
            a.append([v / s + 1e-8 for v in e])
        for n in range(N):
            col = sum(a[l][n] for l in range(L))
            for l in range(L):
                a[l][n] /= col
        templates = [[prev[n][d] + sum(a[l][n] * values[l][d] for l in range(L)) for d in range(D)] for n in range(N)]
        new = []
        for t in templates:
            hidden = [max(0.0, v) for v in _linear(_layer_norm(t, module.norm_mlp), module.mlp[0])]
            mlp = _linear(hidden, module.mlp[2])
            new.append([tv + mv for tv, mv in zip(t, mlp)])
        templates = new
    attention = [[[a[i * w + j][n] for j in range(w)] for i in range(h)] for n in range(N)]
    return torch.tensor(templates, dtype=torch.float64), torch.tensor(attention, dtype=torch.float64)


@pytest.mark.parametrize("T,N,D,C,h,w", [(1, 3, 4, 5, 2, 3), (3, 4, 6, 3, 3, 2)])
def test_lit_matches_naive_loops(T, N, D, C, h, w):
    torch.manual_seed(T * 10 + N)
    module = LIT(C, LITConfig(T=T, N=N, dim=D)).double()
    with torch.no_grad():  # non-default affine parameters of the layer norms
        for ln in (module.norm_inputs, module.norm_templates, module.norm_mlp):
            ln.weight.uniform_(0.5, 1.5)
            ln.bias.uniform_(-0.2, 0.2)
    fmap = torch.randn(C, h, w, dtype=torch.float64) * 3
    feats, attn = module(fmap.unsqueeze(0))
    ref_feats, ref_attn = naive_lit(module, fmap)
    torch.testing.assert_close(feats[0], ref_feats, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(attn[0], ref_attn, rtol=1e-10, atol=1e-12)


def test_attention_is_normalised_over_tokens():
    module = LIT(8, LITConfig(T=2, N=5, dim=16))
    _, attn = module(torch.randn(2, 8, 4, 6))
    assert attn.shape == (2, 5, 4, 6)
    torch.testing.assert_close(attn.sum(dim=(2, 3)), torch.ones(2, 5))


def test_batch_elements_are_independent():
    torch.manual_seed(1)
    module = LIT(8, LITConfig(T=2, N=5, dim=16))
    x = torch.randn(3, 8, 4, 4)
    feats, _ = module(x)
    single, _ = module(x[1:2])
    torch.testing.assert_close(feats[1:2], single, rtol=1e-5, atol=1e-5)


def test_lit_rejects_bad_input_and_config():
    module = LIT(8, LITConfig(T=1, N=2, dim=4))
    with pytest.raises(ValueError, match="B, C, H, W"):
        module(torch.randn(8, 4, 4))
    with pytest.raises(ValueError, match="positive"):
        LITConfig(T=0)
    with pytest.raises(ValueError, match="even"):
        LITConfig(dim=7)
