"""Global-descriptor metric learning: the single-vector baseline next to super-features.

A timm CNN, GeM pooling (learnable ``p``), a linear (whitening) head and L2 normalisation
(:class:`GlobalModel`), trained on class-balanced ``P x K`` batches
(:class:`ClassBalancedBatchSampler`) with the triplet (semi-hard / batch-hard),
contrastive or margin losses of :mod:`lit.losses`, and evaluated by Recall@k with exact
kNN (:func:`knn`, :func:`recall_at_ks`) on Stanford Online Products or any
folder-per-class dataset.

Why not pytorch-metric-learning: lit keeps its dependency set small (torch, timm, kornia
and a few scientific packages), and the handful of losses and miners this baseline needs
live in :mod:`lit.losses`, where each one is tested against a naive per-pair or
per-triplet loop. faiss is optional in the same spirit: :func:`knn` uses it only when it
is installed.

>>> import torch
>>> from lit.metric import GlobalModel, recall_at_ks
>>> model = GlobalModel("resnet18", dim=64)
>>> emb = model(torch.rand(4, 3, 64, 64)).detach()
>>> sorted(recall_at_ks(emb, [0, 0, 1, 1], ks=(1, 10)))  # k clipped to the 3 candidates
[1, 3]
"""

from .data import (
    ClassBalancedBatchSampler,
    ImageFolderClasses,
    LabelledImages,
    SOPList,
    StanfordOnlineProducts,
    eval_transform,
    open_dataset,
    read_sop_list,
    train_transform,
)
from .knn import DEFAULT_KS, KNNResult, clip_ks, faiss_available, knn, recall_at_ks, topk_stable
from .model import GlobalConfig, GlobalModel
from .pooling import GeM, gem
from .train import (
    Embeddings,
    TrainConfig,
    build_loss,
    evaluate_global,
    extract_embeddings,
    train_global,
)

__all__ = [
    "DEFAULT_KS", "ClassBalancedBatchSampler", "Embeddings", "GeM", "GlobalConfig", "GlobalModel",
    "ImageFolderClasses", "KNNResult", "LabelledImages", "SOPList", "StanfordOnlineProducts",
    "TrainConfig", "build_loss",
    "clip_ks", "eval_transform", "evaluate_global", "extract_embeddings",
    "faiss_available", "gem", "knn", "open_dataset", "read_sop_list", "recall_at_ks",
    "topk_stable", "train_global", "train_transform",
]
