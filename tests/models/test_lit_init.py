"""Data-driven LIT initialisation: principal directions, spherical k-means, templates."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

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


def test_background_template_takes_the_weak_features():
    """Clusters of strong and weak features: with a background template, the tokens of low
    raw norm go to it and each cluster's super-feature pools its strong tokens only."""
    rng = np.random.default_rng(3)
    c, per = 24, 60
    centres = rng.standard_normal((3, c))
    labels = np.repeat(np.arange(3), per)
    strong = np.tile(np.arange(per) % 2 == 0, 3)  # half of each cluster is strong
    log_norm = np.where(strong, 2.0, 0.0) + 0.2 * rng.standard_normal(len(labels))
    # the direction of a feature tells its strength (as on a real backbone map, where the
    # normalised token predicts its log-norm well): weak ones lean towards a shared direction
    shared = rng.standard_normal(c)
    direction = centres[labels] + (1.0 - log_norm)[:, None] * shared + 0.05 * rng.standard_normal((len(labels), c))
    x = np.exp(log_norm)[:, None] * direction / np.linalg.norm(direction, axis=1, keepdims=True)
    x = torch.tensor(x, dtype=torch.float32)
    lit = LIT(c, LITConfig(T=1, N=4, dim=16))
    init_lit_from_tokens(lit, x, sharpness=30.0, background=2.0, background_fraction=0.5)
    feats, attn = lit(x.T.reshape(1, c, 10, 18))
    # independent recomputation of the logits: clusters as without background; the last
    # template's by least squares over the tokens of
    # max cluster logit + sharpness * background * (theta - z)
    ln = layer_norm(x.numpy())
    p = lit.project_k.weight.detach().double().numpy()
    keys = ln @ p.T
    u = lit.templates_init[0, :3].detach().double().numpy()
    u = u / np.linalg.norm(u, axis=1, keepdims=True)
    cluster_logits = 30.0 * keys @ u.T / np.sqrt(c)
    z = np.log(np.linalg.norm(x.numpy().astype(np.float64), axis=1))
    z = (z - z.mean()) / z.std(ddof=1)
    wanted = cluster_logits.max(1) + 30.0 * 2.0 * (np.quantile(z, 0.5) - z)
    q_bg, *_ = np.linalg.lstsq(keys, wanted, rcond=None)
    logits = np.concatenate([cluster_logits, (keys @ q_bg)[:, None]], axis=1)
    soft = np.exp(logits - logits.max(1, keepdims=True))
    soft = soft / soft.sum(1, keepdims=True)  # per token, over templates
    pooled = (soft + 1e-8) / (soft + 1e-8).sum(0)  # per template, over tokens
    np.testing.assert_allclose(attn.reshape(4, -1).T.detach().numpy(), pooled, atol=1e-4)
    # the weak tokens go to the background template, the strong ones to their cluster's
    assert soft[~strong, 3].min() > 0.9
    assert soft[strong, 3].max() < 0.1
    template_of = soft[:, :3].argmax(1)
    for lab in range(3):
        members = strong & (labels == lab)
        assert len(set(template_of[members])) == 1
        n = template_of[members][0]
        # the cluster's super-feature is pooled from its strong tokens (almost) only ...
        assert pooled[members, n].sum() > 0.95
        # ... and is its start plus the attention-weighted mean of the projected tokens
        ref = lit.templates_init[0, n].detach().double().numpy() + pooled[:, n] @ keys
        np.testing.assert_allclose(feats[0, n].detach().double().numpy(), ref, atol=1e-3)
    assert len(set(template_of[strong])) == 3
    # the clusters are k-means centroids of the strong tokens only
    ref = spherical_kmeans(torch.tensor(ln[z > np.quantile(z, 0.5)], dtype=torch.float32), 3, seed=0)
    np.testing.assert_allclose(F.normalize(lit.templates_init[0, :3], dim=1).detach().numpy(),
                               F.normalize(ref @ lit.project_k.weight.T, dim=1).detach().numpy(), atol=1e-4)


def test_background_options_are_checked():
    lit = LIT(8, LITConfig(T=1, N=4, dim=8))
    with pytest.raises(ValueError, match="background must be >= 0"):
        init_lit_from_tokens(lit, torch.randn(20, 8), background=-1.0)
    with pytest.raises(ValueError, match=r"background_fraction must be in \(0, 1\)"):
        init_lit_from_tokens(lit, torch.randn(20, 8), background=1.0, background_fraction=1.0)
    with pytest.raises(ValueError, match="N >= 2"):
        init_lit_from_tokens(LIT(8, LITConfig(T=1, N=1, dim=8)), torch.randn(20, 8), background=1.0)
