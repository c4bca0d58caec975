"""Training and evaluation of :class:`lit.metric.GlobalModel` (``lit train-global`` /
``lit evaluate-global`` call :func:`train_dataset` and :func:`evaluate_dataset`).

Training draws class-balanced batches (``P`` classes x ``K`` images,
:class:`~lit.metric.data.ClassBalancedSampler`, pytorch-metric-learning's
``MPerClassSampler``), embeds them and minimises one of the pytorch-metric-learning losses
that :func:`lit.metric.losses.metric_loss` builds: triplet (semi-hard, batch-hard or all
triplets), contrastive (all pairs) or margin (distance-weighted sampling, learnable
boundary). Progress goes to the ``lit.metric.train`` logger.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import torch
import yaml
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from .._checks import check_choice
from .._device import resolve_device
from .._fileio import atomic_write
from ..errors import UsageError
from ..models.backbone import freeze_batchnorm
from .accuracy import recall_at_ks
from .data import (
    ClassBalancedSampler,
    StanfordOnlineProducts,
    eval_transform,
    open_dataset,
    train_transform,
)
from .losses import MetricLoss, metric_loss
from .model import GlobalModel, parameter_groups
from .options import DEFAULT_KS, LOSSES, MINING, SMALL_CLASSES

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """Metric-learning schedule.

    Args:
        loss: ``"triplet"``, ``"contrastive"`` or ``"margin"``.
        mining: triplet mining, ``"semihard"``, ``"batch_hard"`` or ``"all"``.
        margin: triplet / contrastive margin, or the margin loss's ``alpha``; ``None`` for
            :data:`lit.metric.losses.DEFAULT_MARGINS` (0.1, 0.5, 0.2).
        beta: initial boundary of the margin loss.
        classes_per_batch: ``P``.
        samples_per_class: ``K`` (at least 2, so that every image has a positive).
        small_classes: classes with fewer than ``K`` images: ``"replace"`` or ``"skip"``.
        epochs: passes of the sampler.
        batches_per_epoch: default ``floor(classes / P)``.
        lr: AdamW learning rate of the backbone.
        head_lr_scale: learning-rate factor of GeM and head.
        beta_lr: learning rate of the margin loss's boundary (default ``lr``).
        weight_decay: AdamW weight decay (not applied to the boundary).
        freeze_bn: keep batch-norm statistics frozen (for small batches on a pretrained
            backbone).
        amp: bfloat16 autocast on CUDA.
        seed: seeds the sampler, the augmentations and the losses' random draws.
        num_workers: data-loading processes.
    """

    loss: str = "triplet"
    mining: str = "semihard"
    margin: float | None = None
    beta: float = 1.2
    classes_per_batch: int = 32
    samples_per_class: int = 4
    small_classes: str = "replace"
    epochs: int = 20
    batches_per_epoch: int | None = None
    lr: float = 1e-4
    head_lr_scale: float = 1.0
    beta_lr: float | None = None
    weight_decay: float = 1e-4
    freeze_bn: bool = False
    amp: bool = False
    seed: int = 0
    num_workers: int = 0

    def __post_init__(self) -> None:
        check_choice(self.loss, "loss", LOSSES)
        check_choice(self.mining, "mining", MINING)
        check_choice(self.small_classes, "small_classes", SMALL_CLASSES)
        if self.classes_per_batch < 2 or self.samples_per_class < 2:
            raise UsageError(
                f"need at least 2 classes and 2 images per class in a batch, got "
                f"{self.classes_per_batch} x {self.samples_per_class}"
            )
        if self.epochs < 1 or not self.lr > 0:
            raise UsageError(f"epochs must be >= 1 and lr > 0, got {self.epochs}, {self.lr}")


class Embeddings(NamedTuple):
    """Descriptors of a dataset, in dataset order.

    Shape:
        - embeddings: :math:`(N, D)` float32 on the CPU.
        - labels: :math:`(N,)` int64.
    """

    embeddings: Tensor
    labels: Tensor


def build_loss(cfg: TrainConfig) -> MetricLoss:
    """The pytorch-metric-learning loss (and miner) of ``cfg``: ``(embeddings, labels) -> scalar``
    (:func:`lit.metric.losses.metric_loss`)."""
    return metric_loss(cfg.loss, cfg.mining, margin=cfg.margin, beta=cfg.beta)


def extract_embeddings(
    model: GlobalModel,
    dataset: Dataset,
    *,
    batch_size: int = 64,
    num_workers: int = 0,
    device: str | torch.device | None = None,
    amp: bool = False,
) -> Embeddings:
    """Embed every item of a labelled dataset (``dataset[i] = (image, label)``), in order.

    The model is moved to ``device`` and put in eval mode for the pass, then back to its
    previous mode. The move happens before ``inference_mode`` is entered: parameters
    copied to another device inside it would be inference tensors, and training the model
    afterwards would fail.
    """
    dev = resolve_device(device)
    model.to(dev)
    was_training = model.training
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        pin_memory=dev.type == "cuda")
    out, labels = [], []
    try:
        with torch.inference_mode():
            for images, lab in loader:
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp and dev.type == "cuda"):
                    emb = model(images.to(dev, non_blocking=True))
                out.append(emb.float().cpu())
                labels.append(torch.as_tensor(lab, dtype=torch.int64))
    finally:
        model.train(was_training)
    if not out:
        raise UsageError("the dataset is empty")
    return Embeddings(torch.cat(out), torch.cat(labels))


def evaluate_global(
    model: GlobalModel,
    dataset: Dataset,
    ks: Sequence[int] = DEFAULT_KS,
    *,
    batch_size: int = 64,
    num_workers: int = 0,
    device: str | torch.device | None = None,
    backend: str = "torch",
    chunk_size: int | None = None,
) -> dict[int, float]:
    """Recall@k on a labelled dataset, every image querying all the others."""
    emb = extract_embeddings(model, dataset, batch_size=batch_size, num_workers=num_workers, device=device)
    return recall_at_ks(emb.embeddings, emb.labels, ks, chunk_size=chunk_size, device=device, backend=backend)


def train_global(
    model: GlobalModel,
    dataset: Dataset,
    cfg: TrainConfig = TrainConfig(),
    *,
    device: str | torch.device | None = None,
    log_every: int = 50,
    on_epoch_end: Callable[[int, GlobalModel], Any] | None = None,
) -> list[dict[str, float]]:
    """Train ``model`` in place on a labelled dataset.

    The random state of the sampler (``cfg.seed`` and the epoch), of the augmentations (run
    in the main process; with workers, through the loader's seeded generator) and of the
    losses' draws (the margin loss's miner) comes from ``cfg.seed``; the global torch random
    state is restored afterwards. Progress lines (every ``log_every`` steps and per epoch)
    go to this module's logger at level INFO.

    Args:
        model: the model (its initial weights are the caller's choice).
        dataset: yields ``(image, label)`` with images of equal size (use
            :func:`~lit.metric.data.train_transform`) and has a ``labels`` attribute.
        cfg: the schedule.
        device: ``"auto"`` (default: CUDA when available), ``"cpu"``, ``"cuda[:N]"``.
        log_every: steps between progress lines.
        on_epoch_end: called with ``(epoch, model)`` after each epoch.

    Returns:
        One dict per epoch: ``epoch``, mean ``loss``, ``steps``, ``seconds`` (plus ``beta``
        for the margin loss).

    Raises:
        FloatingPointError: the loss became NaN or infinite.
    """
    labels = getattr(dataset, "labels", None)
    if labels is None:
        raise TypeError("the dataset needs a `labels` attribute (one class id per item) for class-balanced sampling")
    dev = resolve_device(device)
    sampler = ClassBalancedSampler(
        labels, cfg.classes_per_batch, cfg.samples_per_class,
        batches_per_epoch=cfg.batches_per_epoch, small_classes=cfg.small_classes, seed=cfg.seed,
    )
    loader = DataLoader(dataset, batch_size=sampler.batch_size, sampler=sampler, num_workers=cfg.num_workers,
                        pin_memory=dev.type == "cuda", generator=torch.Generator().manual_seed(cfg.seed))
    batches = sampler.batches_per_epoch
    model.to(dev)
    loss_fn = build_loss(cfg).to(dev)
    groups = list(parameter_groups(model, cfg.lr, cfg.head_lr_scale))
    loss_params = list(loss_fn.parameters())
    if loss_params:
        groups.append({"params": loss_params, "lr": cfg.beta_lr or cfg.lr, "weight_decay": 0.0})
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    history: list[dict[str, float]] = []
    model.train()
    if cfg.freeze_bn:
        freeze_batchnorm(model)
    # the CPU generator (augmentations, the margin loss's draws) and, on CUDA, the training
    # device's one are seeded here and restored afterwards; no other generator is touched
    forked = [dev] if dev.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=forked, device_type="cuda"):
            torch.default_generator.manual_seed(cfg.seed)
            if forked:
                torch.cuda.default_generators[dev.index if dev.index is not None else torch.cuda.current_device()].manual_seed(cfg.seed)
            for epoch in range(cfg.epochs):
                sampler.set_epoch(epoch)
                start, steps = time.perf_counter(), 0
                # losses are summed on the device and read once per log line / epoch (no
                # per-step host sync); a non-finite loss is detected at those points
                total = torch.zeros((), device=dev, dtype=torch.float64)
                for images, batch_labels in loader:
                    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cfg.amp and dev.type == "cuda"):
                        emb = model(images.to(dev, non_blocking=True))
                    loss = loss_fn(emb.float(), batch_labels.to(dev, non_blocking=True))
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    total += loss.detach()
                    steps += 1
                    if log_every and steps % log_every == 0 and log.isEnabledFor(logging.INFO):
                        mean = _finite_mean(total, steps, epoch)
                        log.info("epoch %d/%d step %d/%d loss %.4f", epoch + 1, cfg.epochs, steps, batches, mean)
                record = {"epoch": epoch + 1, "loss": _finite_mean(total, steps, epoch), "steps": steps,
                          "seconds": time.perf_counter() - start}
                if loss_fn.beta is not None:
                    record["beta"] = float(loss_fn.beta.detach().mean())
                history.append(record)
                log.info("epoch %d/%d: loss %.4f (%d steps, %.1f s)", epoch + 1, cfg.epochs, record["loss"], steps,
                         record["seconds"])
                if on_epoch_end is not None:
                    on_epoch_end(epoch, model)
                    model.train()
                    if cfg.freeze_bn:
                        freeze_batchnorm(model)
    finally:
        model.eval()
    return history


def _finite_mean(total: Tensor, steps: int, epoch: int) -> float:
    """``total / steps`` read on the host (one sync); raises when the loss was not finite."""
    mean = float(total) / max(steps, 1)
    if not math.isfinite(mean):
        raise FloatingPointError(f"epoch {epoch}, up to step {steps}: the loss is {mean}")
    return mean


def train_dataset(root: str | os.PathLike, out: str | os.PathLike, cfg: TrainConfig = TrainConfig(), *,
                  kind: str = "auto", backbone: str = "resnet50", out_index: int = -1, dim: int | None = 512,
                  pretrained: bool = False, image_size: int = 224, evaluate: bool = False,
                  eval_root: str | os.PathLike | None = None, batch_size: int = 64,
                  device: str | torch.device | None = "auto") -> dict[str, Any]:
    """What ``lit train-global`` does: seed, build the model and the dataset, train, save.

    Seeds torch with ``cfg.seed`` (the model's initialisation), trains on ``root``
    (:func:`~lit.metric.data.open_dataset`, training split, :func:`train_transform`), writes
    the checkpoint to ``out`` (:meth:`GlobalModel.save`) and a report beside it (same name,
    ``.yaml``: model and training configuration, dataset, history, recall). With
    ``evaluate``, computes Recall@k (:data:`DEFAULT_KS`) afterwards: on the SOP test split,
    or, for a folder-per-class dataset, on the folder ``eval_root``.

    Returns:
        The report (a JSON-ready dict), plus ``checkpoint`` (the path written) and, with
        ``evaluate``, ``eval_images``.

    Raises:
        UsageError: ``evaluate`` on a folder-per-class dataset without ``eval_root``, and
            the errors of the dataset readers and of :class:`TrainConfig`.
    """
    device = resolve_device(device)
    torch.manual_seed(cfg.seed)
    model = GlobalModel(backbone, dim, pretrained, out_index=out_index, image_size=image_size)
    dataset = open_dataset(root, kind, "train", train_transform(image_size))
    eval_set = None
    if evaluate:
        eval_kind = "sop" if isinstance(dataset, StanfordOnlineProducts) else "folder"
        if eval_kind == "folder" and not eval_root:
            raise UsageError(f"{root}: evaluating a folder-per-class dataset needs a separate evaluation folder (eval_root)")
        eval_set = open_dataset(eval_root or root, eval_kind, "test", eval_transform(image_size))
    log.info("training %s (dim %d) on %d images of %d classes, device %s", backbone, model.out_dim, len(dataset),
             dataset.num_classes, device)
    history = train_global(model, dataset, cfg, device=device)
    out = os.fspath(out)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    report: dict[str, Any] = {
        "model": model.cfg.to_dict(), "train": asdict(cfg),
        "dataset": {"root": os.path.abspath(root), "images": len(dataset), "classes": dataset.num_classes},
        "history": history,
    }
    model.save(out, meta={"train": asdict(cfg), "history": history})
    if eval_set is not None:
        recall = evaluate_global(model, eval_set, DEFAULT_KS, batch_size=batch_size, num_workers=cfg.num_workers,
                                 device=device)
        report["recall"] = {str(k): float(v) for k, v in recall.items()}
    with atomic_write(os.path.splitext(out)[0] + ".yaml") as f:
        yaml.safe_dump(json.loads(json.dumps(report)), f, sort_keys=False)
    report["checkpoint"] = out
    if eval_set is not None:
        report["eval_images"] = len(eval_set)
    return report


def evaluate_dataset(root: str | os.PathLike, *, kind: str = "auto", split: str = "test", checkpoint: str | None = None,
                     backbone: str = "efficientnet_lite0", pretrained: bool = True, image_size: int | None = None,
                     ks: Sequence[int] = DEFAULT_KS, batch_size: int = 64, workers: int = 0,
                     device: str | torch.device | None = "auto", backend: str = "torch",
                     chunk_size: int | None = None) -> dict[str, Any]:
    """Load a model (a ``lit train-global`` checkpoint, else an ImageNet GeM baseline of
    ``backbone`` without head) and a dataset, and compute Recall@k.

    Returns:
        A JSON-ready dict: ``recall`` (``{k: fraction}`` with string keys), ``dataset``
        (``root``, ``split``, ``images``, ``classes``), ``model`` (config), ``checkpoint``,
        ``image_size``, ``device``, ``backend``, ``seconds`` (``extract``, ``knn``).
    """
    device = resolve_device(device)
    if checkpoint:
        model = GlobalModel.load(checkpoint, device=device)
    else:
        model = GlobalModel(backbone, dim=None, pretrained=pretrained).to(device)
    size = image_size or model.cfg.image_size
    dataset = open_dataset(root, kind, split, eval_transform(size))
    t0 = time.perf_counter()
    emb = extract_embeddings(model, dataset, batch_size=batch_size, num_workers=workers, device=device)
    t1 = time.perf_counter()
    recall = recall_at_ks(emb.embeddings, emb.labels, ks, chunk_size=chunk_size, device=device, backend=backend)
    t2 = time.perf_counter()
    return {
        "dataset": {"root": os.path.abspath(root), "split": split, "images": len(dataset), "classes": dataset.num_classes},
        "checkpoint": os.path.abspath(checkpoint) if checkpoint else None,
        "model": model.cfg.to_dict(), "image_size": size, "device": str(device), "backend": backend,
        "recall": {str(k): v for k, v in recall.items()},
        "seconds": {"extract": t1 - t0, "knn": t2 - t1},
    }


__all__ = [
    "Embeddings", "TrainConfig", "build_loss", "evaluate_dataset", "evaluate_global", "extract_embeddings",
    "train_dataset", "train_global",
]
