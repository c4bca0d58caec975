"""Visual-word codebook: seedable k-means on CPU or CUDA (faiss when importable)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .._checks import check_matrix
from ..errors import UsageError, missing_dependency
from .quantize import _faiss as faiss
from .quantize import faiss_available as faiss_available  # re-exported
from .quantize import nearest_words

BACKENDS = ("auto", "torch", "faiss")


def kmeans(
    descriptors: Tensor | np.ndarray,
    k: int,
    *,
    iterations: int = 20,
    seed: int = 0,
    device: str | torch.device = "cpu",
    backend: str = "auto",
) -> Tensor:
    """Lloyd's k-means with L2 distance.

    ``backend="auto"`` uses faiss (``faiss.Kmeans``) when it is importable and the torch
    implementation otherwise; ``"torch"`` and ``"faiss"`` force one. The two backends do
    not give the same centroids for the same seed.

    The torch implementation starts from ``k`` distinct training descriptors drawn with a
    CPU ``torch.Generator`` seeded with ``seed``, then alternates chunked nearest-centroid
    assignment and mean updates; a centroid that loses all its descriptors is moved to a
    random descriptor (same generator). It stops early once no assignment changes. On CPU
    the result is a deterministic function of ``seed``; on CUDA the floating-point sums use
    atomics and may differ in the last bits between runs.

    Args:
        descriptors: training descriptors (float).
        k: number of centroids, ``1 <= k <= N``.
        iterations: maximum number of Lloyd iterations (0 returns the seeded initial
            sample of descriptors, with either backend).
        seed: random seed.
        device: where to run (``"cpu"``, ``"cuda"``...). faiss runs on GPU when the device
            is CUDA and faiss has GPU support.
        backend: ``"auto"``, ``"torch"`` or ``"faiss"``.

    Returns:
        float32 centroids on ``device``.

    Shape:
        - descriptors: :math:`(N, D)`.
        - output: :math:`(k, D)`.
    """
    if backend not in BACKENDS:
        raise UsageError(f"backend must be one of {BACKENDS}, got {backend!r}")
    descriptors = check_matrix(descriptors, "descriptors")
    n = descriptors.shape[0]
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= n:
        raise UsageError(f"k must be an int in 1..{n} (the number of descriptors), got {k!r}")
    if not isinstance(iterations, int) or iterations < 0:
        raise UsageError(f"iterations must be a non-negative int, got {iterations!r}")
    device = torch.device(device)
    if backend == "faiss" and faiss is None:
        raise missing_dependency("k-means with backend='faiss'", "faiss-cpu")
    if iterations > 0 and (backend == "faiss" or (backend == "auto" and faiss is not None)):
        return _kmeans_faiss(descriptors, k, iterations, seed, device)
    return _kmeans_torch(descriptors.to(device=device, dtype=torch.float32), k, iterations, seed)


def _kmeans_torch(x: Tensor, k: int, iterations: int, seed: int) -> Tensor:
    n = x.shape[0]
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    init = torch.randperm(n, generator=gen)[:k].to(x.device)
    centroids = x[init].clone()
    assign = None
    for _ in range(iterations):
        new_assign = nearest_words(x, centroids, 1, backend="torch")[:, 0]
        if assign is not None and torch.equal(new_assign, assign):
            break
        assign = new_assign
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k)
        filled = counts > 0
        centroids = torch.where(filled.unsqueeze(1), sums / counts.clamp_min(1).unsqueeze(1).to(x.dtype), centroids)
        empty = torch.nonzero(~filled).flatten()
        if empty.numel():
            pick = torch.randint(n, (empty.numel(),), generator=gen).to(x.device)
            centroids[empty] = x[pick]
    return centroids


def _kmeans_faiss(x: Tensor, k: int, iterations: int, seed: int, device: torch.device) -> Tensor:
    data = np.ascontiguousarray(x.detach().cpu().numpy().astype(np.float32, copy=False))
    use_gpu = device.type == "cuda" and hasattr(faiss, "StandardGpuResources")
    # min_points_per_centroid=1: faiss only warns (on stderr, once per run) below 39 points a word;
    # lit's codebook policy states its own warning for small sets
    km = faiss.Kmeans(data.shape[1], k, niter=iterations, seed=int(seed), gpu=use_gpu, verbose=False,
                      min_points_per_centroid=1)
    km.train(data)
    return torch.from_numpy(np.asarray(km.centroids, dtype=np.float32)).to(device)
