"""The codebook policy: how many visual words, how many k-means runs, and where a given
codebook comes from (``lit index``, the sharded index, the demo and the benchmarks all call
these)."""

from __future__ import annotations

import logging
import math
import os
import time

import numpy as np
import torch

from .._image import display_name
from ..asmk import ASMK
from ..errors import NotFoundError, PipelineError, UsageError
from ..index_file import load_index

log = logging.getLogger(__name__)

__all__ = [
    "CODEBOOK_WORDS_PER_SQRT", "MAX_CODEBOOK_SIZE", "SMALL_CODEBOOK_DESCRIPTORS", "SMALL_SET_RESTARTS",
    "codebook_size", "kmeans_restarts", "load_codebook", "quantisation_error", "small_set_warning", "train_codebook",
]

#: the codebook has ``CODEBOOK_WORDS_PER_SQRT * sqrt(n)`` words for ``n`` training descriptors
#: (benchmarks/pipeline_defaults.py: inside the flat top of the mAP-vs-size curve on the
#: held-out multi-view scenes and on the training scenes; FIRe's 65,536 words are reached at about 30M descriptors, and its 20k SfM-120k
#: images x 1000 features give 54k)
CODEBOOK_WORDS_PER_SQRT = 12
MAX_CODEBOOK_SIZE = 65536
#: below this many training descriptors the codebook is noisy (a warning says so), and
#: k-means is run ``SMALL_SET_RESTARTS`` times, keeping the codebook of least quantisation error
SMALL_CODEBOOK_DESCRIPTORS = 100_000
SMALL_SET_RESTARTS = 4


def codebook_size(n_descriptors: int, max_size: int = MAX_CODEBOOK_SIZE) -> int:
    """Visual words for a codebook learned on ``n_descriptors`` descriptors.

    ``K = round(12 * sqrt(n))``, at most ``max_size`` (FIRe: 65536) and at most ``n // 2``
    (so that k-means has at least two descriptors per word), but at least ``min(n, 8)``
    (ASMK's query multiple assignment needs 5 words). Chosen by
    measurement (``benchmarks/pipeline_defaults.py``): on the 20 held-out multi-view photos
    (5,120 descriptors of lit-effl0) the sizes 512-1536 words are within the noise of each
    other (30 k-means seeds each: 50.3-52.1 mAP, 1024 best; the default 859 gives 51.1),
    FIRe's ratio (~300 per word) gives 16 words there and 20 mAP less; a square-root rule
    meets FIRe's 65,536 words near its own scale (54k words for 20M descriptors).

    Raises:
        ValueError: ``n_descriptors < 1``.
    """
    n = int(n_descriptors)
    if n < 1:
        raise UsageError(f"a codebook needs at least one descriptor, got {n_descriptors}")
    k = int(round(CODEBOOK_WORDS_PER_SQRT * math.sqrt(n)))
    return max(min(n, 8), min(k, int(max_size), n // 2))


def small_set_warning(n_descriptors: int, n_images: int) -> str | None:
    """A warning for a codebook learned on few descriptors, else ``None``."""
    if n_descriptors >= SMALL_CODEBOOK_DESCRIPTORS:
        return None
    return (f"the codebook is learned on only {n_descriptors} descriptors ({n_images} images); "
            f"retrieval on small sets varies with the k-means seed by several mAP: "
            f"learning it on a larger feature file of similar photos (train_features, `lit index --train-features`) "
            f"steadies it")


def kmeans_restarts(n_descriptors: int) -> int:
    """k-means runs for a codebook learned on ``n_descriptors``: :data:`SMALL_SET_RESTARTS`
    on small sets (where one run is cheap and retrieval varies by several mAP from one seed to
    another; the run of least quantisation error retrieves better: correlation -0.66 over 8
    seeds on the held-out multi-view photos), 1 otherwise."""
    return SMALL_SET_RESTARTS if n_descriptors < SMALL_CODEBOOK_DESCRIPTORS else 1


def quantisation_error(descriptors: torch.Tensor, codebook: torch.Tensor, chunk: int = 65536) -> float:
    """Mean squared distance of each descriptor to its nearest centroid (k-means objective).

    Shape:
        - descriptors: :math:`(N, D)`; codebook: :math:`(K, D)` (on the codebook's device).
    """
    x = torch.as_tensor(descriptors).to(codebook.device, torch.float32)
    total = torch.zeros((), dtype=torch.float64, device=codebook.device)
    for a in range(0, len(x), chunk):
        total += torch.cdist(x[a:a + chunk], codebook.float()).amin(1).double().pow(2).sum()
    return float(total.cpu()) / max(1, len(x))


def train_codebook(descriptors, size: int, seed: int = 0, restarts: int | None = None,
                   device: str | torch.device = "cpu", iterations: int = 20, progress: bool = False) -> torch.Tensor:
    """k-means codebook, best of ``restarts`` runs (default :func:`kmeans_restarts`) by
    :func:`quantisation_error`; run r uses seed ``seed * restarts + r``. With ``progress``,
    each finished run is logged with its time (the runs of large sets take minutes).

    Shape:
        - descriptors: :math:`(N, D)`; returns :math:`(K, D)` on ``device``.
    """
    restarts = kmeans_restarts(len(descriptors)) if restarts is None else int(restarts)
    if restarts < 1:
        raise UsageError(f"restarts must be >= 1, got {restarts}")
    best, best_err = None, math.inf
    for r in range(restarts):
        t0 = time.perf_counter()
        cb = ASMK.train(descriptors, size=size, iterations=iterations, seed=seed * restarts + r, device=device).codebook
        err = quantisation_error(descriptors, cb) if restarts > 1 else 0.0
        if err < best_err:
            best, best_err = cb, err
        if progress:
            log.info(f"  k-means run {r + 1}/{restarts} done in {time.perf_counter() - t0:.1f} s"
                     + (f" (quantisation error {err:.4g})" if restarts > 1 else ""))
    return best


def load_codebook(path: str | os.PathLike) -> tuple[np.ndarray, str | None]:
    """A codebook from ``.npy`` (K x d float) or from an index file; returns it and the
    fingerprint recorded with it (``None`` for ``.npy`` or an index without one).

    Raises:
        NotFoundError: no such file.
        PipelineError: not a K x d float array.
        IndexFileError: an unreadable index file.
    """
    path = os.fspath(path)
    if path.endswith(".npy"):
        if not os.path.isfile(path):
            raise NotFoundError(f"{display_name(path)}: no such codebook file")
        try:
            cb = np.load(path, allow_pickle=False)
        except ValueError as err:
            raise PipelineError(f"{path}: not a numpy codebook ({err})") from None
        if cb.ndim != 2 or not np.issubdtype(cb.dtype, np.floating):
            raise PipelineError(f"{path}: a codebook is a K x d float array, got {cb.dtype} {cb.shape}")
        return cb.astype(np.float32), None
    if not os.path.isfile(path):
        raise NotFoundError(f"{display_name(path)}: no such codebook file (.npy, or an index file)")
    index, info = load_index(path)
    return index.codebook.cpu().numpy(), info.fingerprint
