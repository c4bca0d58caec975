"""The option values of the metric-learning baseline, importable without torch.

The command line builds its parsers from these tuples (``lit train-global --help`` must not
load torch); the library modules check their arguments against the same tuples.
"""

from __future__ import annotations

#: ``TrainConfig.loss``: triplet margin, contrastive or margin loss (pytorch-metric-learning).
LOSSES = ("triplet", "contrastive", "margin")
#: ``TrainConfig.mining``: triplet mining of the triplet loss.
MINING = ("semihard", "batch_hard", "all")
#: Classes with fewer than ``K`` images in the P x K sampler: drawn with replacement, or never.
SMALL_CLASSES = ("replace", "skip")
#: Dataset layouts: Stanford Online Products lists, one sub-folder per class, or guessed.
DATASET_KINDS = ("auto", "sop", "folder")
#: Exact kNN backends of :func:`lit.metric.knn`.
BACKENDS = ("torch", "faiss", "auto")
#: Recall@k reported by default (the Stanford Online Products protocol).
DEFAULT_KS = (1, 10, 100, 1000)

__all__ = ["BACKENDS", "DATASET_KINDS", "DEFAULT_KS", "LOSSES", "MINING", "SMALL_CLASSES"]
