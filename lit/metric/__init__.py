"""Global-descriptor metric learning: the single-vector baseline next to super-features.

A timm CNN, GeM pooling (learnable ``p``), a linear (whitening) head and L2 normalisation
(:class:`GlobalModel`), trained on class-balanced ``P x K`` batches
(:class:`ClassBalancedSampler`) with the triplet (semi-hard / batch-hard / all), contrastive
or margin losses (:func:`metric_loss`), and evaluated by Recall@k (:func:`recall_at_ks`)
with exact kNN (:func:`knn`) on Stanford Online Products or any folder-per-class dataset.

The losses, miners, sampler and the Recall@k driver are pytorch-metric-learning's (PML:
``TripletMarginLoss``, ``TripletMarginMiner``, ``BatchHardMiner``, ``ContrastiveLoss``,
``MarginLoss``, ``DistanceWeightedMiner``, ``MPerClassSampler``, ``AccuracyCalculator``);
lit chooses their settings (:mod:`lit.metric.losses` documents each definition) and plugs
its own exact, chunked kNN into ``AccuracyCalculator``. The model, datasets, GeM and the
training loop are lit's.

Importing ``lit.metric`` is cheap: its names load on first use (PEP 562), and
:mod:`lit.metric.options` holds the option values without torch.

>>> import torch
>>> from lit.metric import GlobalModel, recall_at_ks
>>> model = GlobalModel("resnet18", dim=64)
>>> emb = model(torch.rand(4, 3, 64, 64)).detach()
>>> sorted(recall_at_ks(emb, [0, 0, 1, 1], ks=(1, 10), device="cpu"))  # k clipped to the 3 candidates
[1, 3]
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_LAZY = {
    "lit.metric.accuracy": ("RecallAtK", "recall_at_ks"),
    "lit.metric.data": (
        "ClassBalancedSampler", "ImageFolderClasses", "LabelledImages", "SOPList", "StanfordOnlineProducts",
        "eval_transform", "open_dataset", "read_sop_list", "train_transform",
    ),
    "lit.metric.exact_knn": ("ExactKNN", "KNNResult", "clip_ks", "faiss_available", "knn", "topk_stable"),
    "lit.metric.losses": ("DEFAULT_MARGINS", "MetricLoss", "metric_loss"),
    "lit.metric.model": ("GlobalConfig", "GlobalModel"),
    "lit.metric.options": ("BACKENDS", "DATASET_KINDS", "DEFAULT_KS", "LOSSES", "MINING", "SMALL_CLASSES"),
    "lit.metric.pooling": ("GeM", "gem"),
    "lit.metric.train": (
        "Embeddings", "TrainConfig", "build_loss", "evaluate_dataset", "evaluate_global", "extract_embeddings",
        "train_dataset", "train_global",
    ),
}
_WHERE = {name: module for module, names in _LAZY.items() for name in names}

if TYPE_CHECKING:  # pragma: no cover
    from .accuracy import RecallAtK, recall_at_ks
    from .data import (
        ClassBalancedSampler,
        ImageFolderClasses,
        LabelledImages,
        SOPList,
        StanfordOnlineProducts,
        eval_transform,
        open_dataset,
        read_sop_list,
        train_transform,
    )
    from .exact_knn import ExactKNN, KNNResult, clip_ks, faiss_available, knn, topk_stable
    from .losses import DEFAULT_MARGINS, MetricLoss, metric_loss
    from .model import GlobalConfig, GlobalModel
    from .options import BACKENDS, DATASET_KINDS, DEFAULT_KS, LOSSES, MINING, SMALL_CLASSES
    from .pooling import GeM, gem
    from .train import (
        Embeddings,
        TrainConfig,
        build_loss,
        evaluate_dataset,
        evaluate_global,
        extract_embeddings,
        train_dataset,
        train_global,
    )


def __getattr__(name: str):
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'lit.metric' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))


__all__ = [
    "BACKENDS", "ClassBalancedSampler", "DATASET_KINDS", "DEFAULT_KS", "DEFAULT_MARGINS", "Embeddings",
    "ExactKNN", "GeM", "GlobalConfig", "GlobalModel", "ImageFolderClasses", "KNNResult", "LOSSES",
    "LabelledImages", "MINING", "MetricLoss", "RecallAtK", "SMALL_CLASSES", "SOPList",
    "StanfordOnlineProducts", "TrainConfig", "build_loss", "clip_ks", "eval_transform", "evaluate_dataset",
    "evaluate_global", "extract_embeddings", "faiss_available", "gem", "knn", "metric_loss", "open_dataset",
    "read_sop_list", "recall_at_ks", "topk_stable", "train_dataset", "train_global", "train_transform",
]
