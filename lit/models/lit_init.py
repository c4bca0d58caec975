"""Data-driven initialisation of a LIT: templates start as clusters of real local features.

A randomly initialised LIT mixes local features with random templates; on a frozen
ImageNet backbone and little training data it learns slowly (``weights/README.md``: a
trained LIT barely beats an untrained one there). :func:`init_lit_from_tokens` starts it
where a bag-of-words would: each template attends to one cluster of local features.

With the tokens ``x`` of training images (after ``norm_inputs``):

1. ``P`` (``D x C``): the ``D`` leading principal directions of the tokens; the key and
   value projections both start as ``P`` (``D <= C``), so a super-feature is a weighted
   mean of projected tokens.
2. ``c_1..c_N``: spherical k-means centroids of the tokens; template ``n`` starts as
   ``0.01 P c_n`` (small: the first iteration adds the mean of its tokens to it).
3. ``project_q`` is the least-squares map from the normalised templates to
   ``sharpness * sqrt(D / C) * u_n`` with ``u_n = P c_n / |P c_n|``, so that the attention
   logit of token ``x`` on template ``n`` is ``sharpness * <u_n, P x> / sqrt(C)`` (the
   forward divides by ``sqrt(D)``). A normalised token has norm ``sqrt(C)``, so this is
   ``sharpness`` times (nearly) the cosine of the token and the centroid: a softmax at
   temperature ``1 / sharpness`` over the templates, each token mostly going to the
   template of its nearest centroid.
4. The last MLP layer starts at zero, so the MLP adds nothing before training.

With ``background > 0`` the last template is a *background* template instead of a
cluster (the others are ``N - 1`` k-means clusters of the strong features): it takes the weak local features, so
that every other super-feature pools only the strong ones of its cluster. "Weak" is the
backbone's own measure, the norm of the feature before ``norm_inputs`` (a raw local
feature's norm is what selecting the strongest features in HOW-style retrieval relies on);
the LIT only sees the normalised token, but its log-norm is nearly linear in it (R^2 about
0.87 on the Lite0 map, ``weights/README.md``). The background query is the least-squares
fit, over the training tokens ``x``, of the logit

    max_n (cluster logit_n(x)) + sharpness * background * (theta - z(x))

with ``z`` the standardised log-norm of ``x`` before normalisation and ``theta`` its
``background_fraction`` quantile: a token weaker than ``theta`` goes to the background
template, more surely the larger ``background`` (in standard deviations of ``z`` per unit
of cosine). The background template starts as ``0.01 P m``, ``m`` the mean of the weak
tokens, made orthogonal to the other starts (so that the query solve stays exact).

Later iterations (``T > 1``) query with the updated templates; the scene cross-validation
of ``weights/README.md`` found ``T = 3`` no better than ``T = 1`` with this initialisation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .lit_module import LIT


def principal_directions(x: Tensor, k: int) -> Tensor:
    """The ``k`` leading eigenvectors (rows) of the covariance of ``x``, signs fixed.

    Shape:
        - Input: :math:`(M, C)`.
        - Output: :math:`(k, C)`, orthonormal rows, decreasing variance.
    """
    x = x.double()
    xc = x - x.mean(dim=0)
    _, vec = torch.linalg.eigh(xc.T @ xc)
    vec = vec.flip(1)[:, :k]
    signs = torch.sign(vec.gather(0, vec.abs().argmax(dim=0, keepdim=True)))
    return (vec * signs).T.float()


def spherical_kmeans(x: Tensor, k: int, *, iterations: int = 20, seed: int = 0) -> Tensor:
    """``k`` unit-norm centroids maximising the cosine to the unit-normalised ``x``.

    Starts from ``k`` distinct rows drawn with a generator seeded by ``seed``; an empty
    cluster gets the row least similar to its centroid. Deterministic on CPU.

    Shape:
        - Input: :math:`(M, C)`, ``M >= k``.
        - Output: :math:`(k, C)`.
    """
    if x.dim() != 2 or x.shape[0] < k:
        raise ValueError(f"spherical k-means with k={k} needs at least {k} rows, got shape {tuple(x.shape)}")
    x = F.normalize(x.float(), dim=1)
    g = torch.Generator().manual_seed(seed)
    c = x[torch.randperm(x.shape[0], generator=g)[:k]].clone()
    for _ in range(iterations):
        sim = x @ c.T
        best, assign = sim.max(dim=1)
        sums = torch.zeros_like(c).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k)
        empty = (counts == 0).nonzero().flatten()
        if len(empty):
            worst = best.argsort()[: len(empty)]
            sums[empty] = x[worst]
        new = F.normalize(sums, dim=1)
        if torch.equal(new, c):
            break
        c = new
    return c


def _independent_start(v: Tensor, others: Tensor) -> Tensor:
    """``v`` (D) made orthogonal to the rows of ``others`` and to the constant vector, unit norm.

    The queries are solved from the LayerNorm'd starting templates (each in the span of
    itself and the constant vector), so a start outside that span keeps the solve exact even
    when the weak features' mean lies among the cluster directions."""
    v = v.double()
    basis = torch.cat([others.double(), torch.ones(1, len(v), dtype=torch.float64)])
    q, _ = torch.linalg.qr(basis.T)  # (D, k) orthonormal columns spanning the other starts
    rest = v - q @ (q.T @ v)
    if rest.norm() < 1e-6 * max(float(v.norm()), 1.0):  # v among them: any direction outside
        eye = torch.eye(len(v), dtype=torch.float64)
        rest = (eye - q @ q.T)[:, int((eye - q @ q.T).norm(dim=0).argmax())]
    return F.normalize(rest, dim=0).float()


@torch.no_grad()
def init_lit_from_tokens(lit: LIT, tokens: Tensor, *, sharpness: float = 100.0, seed: int = 0,
                         iterations: int = 20, background: float = 0.0,
                         background_fraction: float = 0.5) -> None:
    """Initialise ``lit`` in place from local features of training images (module docstring).

    Args:
        lit: the LIT to initialise (any ``T``; ``dim`` at most its input channels).
        tokens: backbone local features, :math:`(M, C)`, before ``norm_inputs`` (which is
            applied here), ``M >= N``; a few tens of thousands are plenty.
        sharpness: attention logit per unit of cosine between token and centroid.
        seed: seeds the k-means.
        iterations: k-means iterations.
        background: ``0``: every template is a k-means cluster; ``> 0``: the last one is a
            background template for the weak features, gated this sharply (module docstring).
        background_fraction: share of the training tokens that count as weak.

    Raises:
        ValueError: wrong token width, fewer tokens than templates, ``dim > C``, or a
            background that is negative, has no cluster template beside it, or a fraction
            outside (0, 1).
    """
    c_in = lit.project_k.in_features
    d, n = lit.cfg.dim, lit.cfg.N
    if tokens.dim() != 2 or tokens.shape[1] != c_in:
        raise ValueError(f"tokens must be (M, {c_in}) local features, got shape {tuple(tokens.shape)}")
    if d > c_in:
        raise ValueError(f"data-driven LIT initialisation needs dim <= input channels, got dim={d} > {c_in}")
    if tokens.shape[0] < n:
        raise ValueError(f"{tokens.shape[0]} tokens cannot initialise {n} templates")
    if background < 0:
        raise ValueError(f"background must be >= 0, got {background}")
    if background and n < 2:
        raise ValueError("a background template needs at least one cluster template beside it (N >= 2)")
    if background and not 0 < background_fraction < 1:
        raise ValueError(f"background_fraction must be in (0, 1), got {background_fraction}")
    device = lit.templates_init.device
    x = lit.norm_inputs(tokens.to(device, torch.float32)).cpu()
    p = principal_directions(x, d)  # (D, C)
    clustered = x
    if background:
        z = tokens.detach().cpu().double().norm(dim=1).clamp_min(1e-12).log()
        z = (z - z.mean()) / z.std().clamp_min(1e-12)
        theta = torch.quantile(z, background_fraction)
        clustered = x[z > theta]  # the clusters describe the strong features
        if len(clustered) < n - 1:
            raise ValueError(f"{len(clustered)} strong tokens cannot initialise {n - 1} cluster templates "
                             "(lower background_fraction or give more tokens)")
    centroids = spherical_kmeans(clustered, n - 1 if background else n, iterations=iterations, seed=seed)
    pc = centroids @ p.T  # (clusters, D)
    # query targets: the logit of token x on template n is <P x, target_n> / sqrt(D)
    target = sharpness * (d / c_in) ** 0.5 * F.normalize(pc, dim=1).double()
    if background:
        keys = (x @ p.T).double()  # (M, D)
        wanted = (keys @ target.T).max(dim=1).values / d**0.5 + sharpness * background * (theta - z)
        q_bg = torch.linalg.lstsq(keys, wanted[:, None], driver="gelsd").solution[:, 0] * d**0.5
        pc = torch.cat([pc, _independent_start(x[z <= theta].mean(dim=0) @ p.T, pc)[None]])
        target = torch.cat([target, q_bg[None]])
    templates = 0.01 * pc
    lit.project_k.weight.copy_(p)
    lit.project_v.weight.copy_(p)
    lit.templates_init.copy_(templates.unsqueeze(0))
    normed = lit.norm_templates(templates.to(device)).cpu().double()  # (N, D)
    w_t = torch.linalg.lstsq(normed, target, driver="gelsd").solution  # (D, D): normed @ w_t ~ target
    lit.project_q.weight.copy_(w_t.T.float())
    lit.mlp[2].weight.zero_()
    lit.mlp[2].bias.zero_()
