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


@torch.no_grad()
def init_lit_from_tokens(lit: LIT, tokens: Tensor, *, sharpness: float = 100.0, seed: int = 0,
                         iterations: int = 20) -> None:
    """Initialise ``lit`` in place from local features of training images (module docstring).

    Args:
        lit: the LIT to initialise (any ``T``; ``dim`` at most its input channels).
        tokens: backbone local features, :math:`(M, C)`, before ``norm_inputs`` (which is
            applied here), ``M >= N``; a few tens of thousands are plenty.
        sharpness: attention logit per unit of cosine between token and centroid.
        seed: seeds the k-means.
        iterations: k-means iterations.

    Raises:
        ValueError: wrong token width, fewer tokens than templates, or ``dim > C``.
    """
    c_in = lit.project_k.in_features
    d, n = lit.cfg.dim, lit.cfg.N
    if tokens.dim() != 2 or tokens.shape[1] != c_in:
        raise ValueError(f"tokens must be (M, {c_in}) local features, got shape {tuple(tokens.shape)}")
    if d > c_in:
        raise ValueError(f"data-driven LIT initialisation needs dim <= input channels, got dim={d} > {c_in}")
    if tokens.shape[0] < n:
        raise ValueError(f"{tokens.shape[0]} tokens cannot initialise {n} templates")
    device = lit.templates_init.device
    x = lit.norm_inputs(tokens.to(device, torch.float32)).cpu()
    p = principal_directions(x, d)  # (D, C)
    centroids = spherical_kmeans(x, n, iterations=iterations, seed=seed)  # (N, C)
    pc = centroids @ p.T  # (N, D)
    templates = 0.01 * pc
    lit.project_k.weight.copy_(p)
    lit.project_v.weight.copy_(p)
    lit.templates_init.copy_(templates.unsqueeze(0))
    normed = lit.norm_templates(templates.to(device)).cpu().double()  # (N, D)
    target = sharpness * (d / c_in) ** 0.5 * F.normalize(pc, dim=1).double()
    w_t = torch.linalg.lstsq(normed, target, driver="gelsd").solution  # (D, D): normed @ w_t ~ target
    lit.project_q.weight.copy_(w_t.T.float())
    lit.mlp[2].weight.zero_()
    lit.mlp[2].bias.zero_()
