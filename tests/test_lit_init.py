"""Data-driven LIT initialisation: principal directions, spherical k-means, templates."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lit.models import LIT, LITConfig, init_lit_from_tokens, principal_directions, spherical_kmeans


def clustered_tokens(n_clusters=4, per=60, c=24, noise=0.05, seed=0):
    """Tokens around ``n_clusters`` random directions; returns tokens and true labels."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_clusters, c))
    labels = np.repeat(np.arange(n_clusters), per)
    x = centres[labels] * rng.uniform(0.5, 2.0, (len(labels), 1)) + noise * rng.standard_normal((len(labels), c))
    return torch.tensor(x, dtype=torch.float32), labels


def layer_norm(x):
    x = np.asarray(x, dtype=np.float64)
    mu = x.mean(1, keepdims=True)
    var = x.var(1, keepdims=True)
    return (x - mu) / np.sqrt(var + 1e-5)


def test_principal_directions_match_numpy_svd_up_to_sign():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((200, 6)) @ rng.standard_normal((6, 6)) + 3.0
    p = principal_directions(torch.tensor(x, dtype=torch.float32), 3).double().numpy()
    _, _, vt = np.linalg.svd(x - x.mean(0), full_matrices=False)
    for got, ref in zip(p, vt[:3]):
        assert abs(abs(got @ ref) - 1) < 1e-5
    np.testing.assert_allclose(p @ p.T, np.eye(3), atol=1e-5)
    # signs fixed: the largest component of each direction is positive
    assert all(row[np.abs(row).argmax()] > 0 for row in p)


def test_spherical_kmeans_recovers_directions_and_ignores_lengths():
    x, labels = clustered_tokens()
    c = spherical_kmeans(x, 4, seed=0)
    np.testing.assert_allclose(c.norm(dim=1).numpy(), 1.0, atol=1e-5)
    assign = (torch.nn.functional.normalize(x, dim=1) @ c.T).argmax(1).numpy()
    # each true cluster maps onto one centroid, and different clusters onto different ones
    mapping = {lab: set(assign[labels == lab]) for lab in range(4)}
    assert all(len(s) == 1 for s in mapping.values())
    assert len(set().union(*mapping.values())) == 4
    for lab in range(4):  # centroid = normalised mean of the unit-normalised members
        members = x[labels == lab] / x[labels == lab].norm(dim=1, keepdim=True)
        ref = members.mean(0) / members.mean(0).norm()
        got = c[next(iter(mapping[lab]))]
        assert float(got @ ref) > 1 - 1e-5
    assert torch.equal(c, spherical_kmeans(x, 4, seed=0))


def test_spherical_kmeans_needs_enough_rows():
    with pytest.raises(ValueError, match="at least 5 rows"):
        spherical_kmeans(torch.randn(4, 3), 5)


def test_initialised_lit_pools_each_cluster_into_its_own_template():
    torch.manual_seed(0)
    x, labels = clustered_tokens(n_clusters=4, per=60, c=24)
    lit = LIT(24, LITConfig(T=1, N=4, dim=16))
    init_lit_from_tokens(lit, x, sharpness=30.0, seed=0)
    assert torch.count_nonzero(lit.mlp[2].weight) == 0 and torch.count_nonzero(lit.mlp[2].bias) == 0
    # one image made of 6 tokens of each cluster
    pick = np.concatenate([np.flatnonzero(labels == lab)[:6] for lab in range(4)])
    fmap = x[pick].T.reshape(1, 24, 4, 6)
    feats, attn = lit(fmap)
    attn = attn.reshape(4, -1)  # (N, L), normalised over tokens
    template_of = attn.argmax(0).numpy()
    tok_labels = labels[pick]
    assert all(len(set(template_of[tok_labels == lab])) == 1 for lab in range(4))
    assert len(set(template_of)) == 4
    # independent recomputation: template n = 0.01 P c_n + mean of P LN(x) over its cluster
    ln = layer_norm(x.numpy())
    xc = ln - ln.mean(0)
    _, _, vt = np.linalg.svd(xc, full_matrices=False)
    p = lit.project_k.weight.detach().double().numpy()
    for got, ref in zip(p, vt[:16]):
        assert abs(abs(got @ ref) - 1) < 1e-4
    np.testing.assert_array_equal(lit.project_v.weight.detach().numpy(), lit.project_k.weight.detach().numpy())
    ln_pick = layer_norm(x[pick].numpy())
    # attention logits are sharpness x <u_n, P x> / sqrt(C), u_n the unit starting template
    u = lit.templates_init[0].detach().double().numpy()
    u = u / np.linalg.norm(u, axis=1, keepdims=True)
    logits = 30.0 * (ln_pick @ p.T) @ u.T / np.sqrt(24)
    soft = np.exp(logits - logits.max(1, keepdims=True))
    soft = soft / soft.sum(1, keepdims=True) + 1e-8
    np.testing.assert_allclose(attn.T.detach().double().numpy(), soft / soft.sum(0), atol=1e-4)
    for lab in range(4):
        n = template_of[tok_labels == lab][0]
        start = lit.templates_init[0, n].detach().double().numpy()
        ref = start + (ln_pick[tok_labels == lab] @ p.T).mean(0)
        np.testing.assert_allclose(feats[0, n].detach().double().numpy(), ref, atol=1e-3)
        # the starting template points along P c_n of this cluster's direction
        unit = ln[labels == lab] / np.linalg.norm(ln[labels == lab], axis=1, keepdims=True)
        direction = unit.mean(0) @ p.T
        cos = start @ direction / np.linalg.norm(start) / np.linalg.norm(direction)
        assert cos > 0.999


def test_init_lit_from_tokens_rejects_bad_inputs():
    lit = LIT(8, LITConfig(T=1, N=4, dim=8))
    with pytest.raises(ValueError, match=r"\(M, 8\)"):
        init_lit_from_tokens(lit, torch.randn(20, 7))
    with pytest.raises(ValueError, match="3 tokens cannot initialise 4 templates"):
        init_lit_from_tokens(lit, torch.randn(3, 8))
    with pytest.raises(ValueError, match="dim <= input channels"):
        init_lit_from_tokens(LIT(8, LITConfig(T=1, N=4, dim=16)), torch.randn(20, 8))
