"""Calibrated text-search scores: how far a photo's score stands above the scores that
meaningless texts get on the same photo.

A raw score (the dot product in the joint space) depends on the photo and on how peaked the
query is: a vague or meaningless text spreads over many classes and overlaps every photo a
little, so ``"asdfgh qwerty"`` can outscore the right photo of a real query. The calibrated
score of photo ``j`` for a query is

    z = (score - mean_j) / std_j

where ``mean_j`` and ``std_j`` are the mean and standard deviation of the scores of
:data:`REFERENCE_TEXTS` random letter strings (fixed seed) on photo ``j``: ``z`` is in
standard deviations above chance for that photo, comparable across queries and photos. A
query whose best ``z`` stays below :data:`CONFIDENT_Z` has no confident result (gibberish,
or a thing that is not in the collection).
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["CONFIDENT_Z", "REFERENCE_TEXTS", "calibrate", "reference_scores", "reference_texts"]

#: random texts the scores of a photo are compared with
REFERENCE_TEXTS = 256
#: calibrated score from which a result counts as confident (standard deviations above the
#: scores of meaningless texts): benchmarks/text_calibration.py's development half put the best
#: threshold at 2.36, just above its gibberish queries (up to 2.31); 3 leaves a margin
CONFIDENT_Z = 3.0

_CACHE: dict[tuple[str, int, int], torch.Tensor] = {}


def reference_texts(n: int = REFERENCE_TEXTS, seed: int = 0) -> list[str]:
    """``n`` meaningless texts: 1 to 4 random lowercase "words" of 2 to 9 letters."""
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    return [" ".join("".join(rng.choice(letters, rng.integers(2, 10))) for _ in range(rng.integers(1, 5)))
            for _ in range(n)]


def reference_scores(model, image: torch.Tensor, n: int = REFERENCE_TEXTS, seed: int = 0) -> torch.Tensor:
    """Scores :math:`(n, N)` of the reference texts on the joint-space photos ``image``
    :math:`(N, D)` (the texts' embeddings are computed once per model and process)."""
    key = (getattr(model, "name", type(model).__name__), n, seed)
    if key not in _CACHE:
        emb, _ = model.encode(reference_texts(n, seed))
        _CACHE[key] = emb.detach()
    return _CACHE[key].to(image) @ image.T


def calibrate(scores: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Calibrated scores :math:`(Q, N)`: ``(scores - mean) / std`` per photo (column) of the
    reference scores :math:`(R, N)`."""
    mean = reference.mean(0, keepdim=True)
    std = reference.std(0, keepdim=True).clamp_min(1e-6)
    return (scores - mean) / std
