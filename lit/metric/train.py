"""Training and evaluation of :class:`lit.metric.GlobalModel`, and the ``lit train-global`` /
``lit evaluate-global`` commands.

Training draws class-balanced batches (``P`` classes x ``K`` images,
:class:`~lit.metric.data.ClassBalancedBatchSampler`), embeds them and minimises one of the
:mod:`lit.losses` batch losses: triplet (semi-hard, batch-hard or all triplets),
contrastive (all pairs) or margin (distance-weighted sampling, learnable boundary).
These come from :mod:`lit.losses` rather than pytorch-metric-learning: lit keeps its
dependencies few, and each of its losses and miners is tested against a naive loop.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from ..losses import MarginLoss, PairwiseContrastiveLoss, TripletMarginLoss
from ..models.backbone import freeze_batchnorm
from .data import (
    SMALL_CLASSES,
    ClassBalancedBatchSampler,
    StanfordOnlineProducts,
    eval_transform,
    open_dataset,
    train_transform,
)
from .knn import BACKENDS, DEFAULT_KS, recall_at_ks
from .model import GlobalModel, parameter_groups

LOSSES = ("triplet", "contrastive", "margin")
MINING = ("semihard", "batch_hard", "all")


@dataclass(frozen=True)
class TrainConfig:
    """Metric-learning schedule.

    Args:
        loss: ``"triplet"``, ``"contrastive"`` or ``"margin"``.
        mining: triplet mining, ``"semihard"``, ``"batch_hard"`` or ``"all"``.
        margin: triplet / contrastive margin, or the margin loss's ``alpha``; ``None`` for
            the :mod:`lit.losses` default (0.1, 0.5, 0.2).
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
        seed: seeds the sampler, the augmentations and the margin loss's sampling.
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
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if self.mining not in MINING:
            raise ValueError(f"mining must be one of {MINING}, got {self.mining!r}")
        if self.small_classes not in SMALL_CLASSES:
            raise ValueError(f"small_classes must be one of {SMALL_CLASSES}, got {self.small_classes!r}")
        if self.classes_per_batch < 2 or self.samples_per_class < 2:
            raise ValueError(
                f"need at least 2 classes and 2 images per class in a batch, got "
                f"{self.classes_per_batch} x {self.samples_per_class}"
            )
        if self.epochs < 1 or not self.lr > 0:
            raise ValueError(f"epochs must be >= 1 and lr > 0, got {self.epochs}, {self.lr}")


class Embeddings(NamedTuple):
    """Descriptors of a dataset, in dataset order.

    Shape:
        - embeddings: :math:`(N, D)` float32 on the CPU.
        - labels: :math:`(N,)` int64.
    """

    embeddings: Tensor
    labels: Tensor


def _device(name: str | torch.device | None) -> torch.device:
    if name is None or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r}: CUDA is not available on this machine")
    return dev


def build_loss(cfg: TrainConfig) -> nn.Module:
    """The :mod:`lit.losses` module for ``cfg.loss``; it maps ``(embeddings, labels)`` to a scalar."""
    margin = {} if cfg.margin is None else {"margin": cfg.margin}
    if cfg.loss == "triplet":
        return TripletMarginLoss(mining=cfg.mining, **margin)
    if cfg.loss == "contrastive":
        return PairwiseContrastiveLoss(**margin)
    alpha = {} if cfg.margin is None else {"alpha": cfg.margin}
    return MarginLoss(beta_init=cfg.beta, **alpha)


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
    dev = _device(device)
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
        raise ValueError("the dataset is empty")
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
    log: Callable[[str], None] | None = None,
    log_every: int = 50,
    on_epoch_end: Callable[[int, GlobalModel], Any] | None = None,
) -> list[dict[str, float]]:
    """Train ``model`` in place on a labelled dataset.

    The random state of the sampler, the augmentations (run in the main process; with
    workers, through the loader's seeded generator) and the margin loss's sampling comes
    from ``cfg.seed``; the global torch random state is restored afterwards.

    Args:
        model: the model (its initial weights are the caller's choice).
        dataset: yields ``(image, label)`` with images of equal size (use
            :func:`~lit.metric.data.train_transform`) and has a ``labels`` attribute.
        cfg: the schedule.
        device: default CUDA when available.
        log: called with progress lines.
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
    dev = _device(device)
    sampler = ClassBalancedBatchSampler(
        labels, cfg.classes_per_batch, cfg.samples_per_class,
        batches_per_epoch=cfg.batches_per_epoch, small_classes=cfg.small_classes, seed=cfg.seed,
    )
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=cfg.num_workers,
                        pin_memory=dev.type == "cuda", generator=torch.Generator().manual_seed(cfg.seed))
    model.to(dev)
    loss_fn = build_loss(cfg).to(dev)
    groups = list(parameter_groups(model, cfg.lr, cfg.head_lr_scale))
    loss_params = list(loss_fn.parameters())
    if loss_params:
        groups.append({"params": loss_params, "lr": cfg.beta_lr or cfg.lr, "weight_decay": 0.0})
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    generator = torch.Generator(device=dev).manual_seed(cfg.seed) if cfg.loss == "margin" else None
    history: list[dict[str, float]] = []
    model.train()
    if cfg.freeze_bn:
        freeze_batchnorm(model)
    # the CPU generator (augmentations, sampling) and, on CUDA, the training device's one are
    # seeded here and restored afterwards; no other generator is touched
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
                    batch_labels = batch_labels.to(dev, non_blocking=True)
                    if generator is not None:
                        loss = loss_fn(emb.float(), batch_labels, generator=generator)
                    else:
                        loss = loss_fn(emb.float(), batch_labels)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    total += loss.detach()
                    steps += 1
                    if log is not None and steps % log_every == 0:
                        mean = _finite_mean(total, steps, epoch)
                        log(f"epoch {epoch + 1}/{cfg.epochs} step {steps}/{len(sampler)} loss {mean:.4f}")
                record = {"epoch": epoch + 1, "loss": _finite_mean(total, steps, epoch), "steps": steps,
                          "seconds": time.perf_counter() - start}
                if cfg.loss == "margin":
                    record["beta"] = float(loss_fn.beta.detach().mean())
                history.append(record)
                if log is not None:
                    log(f"epoch {epoch + 1}/{cfg.epochs}: loss {record['loss']:.4f} ({steps} steps, {record['seconds']:.1f} s)")
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


# ---------------------------------------------------------------------- command line
def _dim(text: str) -> int | None:
    if text.lower() in ("none", "0"):
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--dim must be a positive integer or 'none', got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"--dim must be a positive integer or 'none', got {text!r}")
    return value


def _ks(text: str) -> tuple[int, ...]:
    try:
        ks = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--ks must be comma-separated integers, got {text!r}") from None
    if not ks or min(ks) < 1:
        raise argparse.ArgumentTypeError(f"--ks must be positive, got {text!r}")
    return ks


def _log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _format_recall(recall: dict[int, float]) -> str:
    return "  ".join(f"R@{k} {100 * v:.2f}" for k, v in sorted(recall.items()))


def add_train_global_arguments(parser: argparse.ArgumentParser) -> None:
    """train a global-descriptor model (timm CNN, GeM, linear head) by metric learning"""
    parser.add_argument("--root", required=True, help="dataset folder: Stanford Online Products (Ebay_train.txt) or one sub-folder per class")
    parser.add_argument("--dataset", choices=("auto", "sop", "folder"), default="auto", help="dataset format (default auto: sop when ROOT/Ebay_train.txt exists)")
    parser.add_argument("--out", required=True, help="output checkpoint (.pt); the configuration and history go to the same name with .yaml")
    parser.add_argument("--backbone", default="resnet50", help="timm model name (default resnet50; efficientnet_lite0 with --pretrained uses the packaged weights)")
    parser.add_argument("--out-index", type=int, default=-1, help="feature stage to pool (default -1: the last)")
    parser.add_argument("--dim", type=_dim, default=512, help="descriptor dimension, or 'none' for no head (default 512)")
    parser.add_argument("--pretrained", action="store_true", help="start from ImageNet weights")
    parser.add_argument("--image-size", type=int, default=224, help="training crop and evaluation size (default 224)")
    parser.add_argument("--loss", choices=LOSSES, default="triplet", help="default triplet")
    parser.add_argument("--mining", choices=MINING, default="semihard", help="triplet mining (default semihard)")
    parser.add_argument("--margin", type=float, default=None, help="triplet/contrastive margin or margin-loss alpha (default: the loss's own)")
    parser.add_argument("--beta", type=float, default=1.2, help="initial margin-loss boundary (default 1.2)")
    parser.add_argument("--classes-per-batch", "-P", type=int, default=32, help="P (default 32)")
    parser.add_argument("--samples-per-class", "-K", type=int, default=4, help="K (default 4)")
    parser.add_argument("--small-classes", choices=SMALL_CLASSES, default="replace", help="classes with fewer than K images (default replace)")
    parser.add_argument("--epochs", type=int, default=20, help="default 20")
    parser.add_argument("--batches-per-epoch", type=int, default=None, help="default: classes // P")
    parser.add_argument("--lr", type=float, default=1e-4, help="AdamW learning rate (default 1e-4)")
    parser.add_argument("--head-lr-scale", type=float, default=1.0, help="learning-rate factor of GeM and head (default 1)")
    parser.add_argument("--weight-decay", type=float, default=1e-4, help="default 1e-4")
    parser.add_argument("--freeze-bn", action="store_true", help="freeze batch-norm statistics")
    parser.add_argument("--amp", action="store_true", help="bfloat16 autocast on CUDA")
    parser.add_argument("--seed", type=int, default=0, help="seeds initialisation, sampling and augmentation (default 0)")
    parser.add_argument("--workers", type=int, default=0, help="data-loading processes (default 0)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N] (default auto)")
    parser.add_argument("--eval", action="store_true", help="report Recall@k after training (SOP: the test split; folders: --eval-root)")
    parser.add_argument("--eval-root", default=None, help="evaluation folder (folder per class) for --eval")
    parser.add_argument("--batch-size", type=int, default=64, help="evaluation batch size (default 64)")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")


def run_train_global(args: argparse.Namespace) -> int:
    """Run ``lit train-global``; returns the exit status."""
    import yaml

    device = _device(args.device)
    torch.manual_seed(args.seed)
    model = GlobalModel(args.backbone, args.dim, args.pretrained, out_index=args.out_index, image_size=args.image_size)
    dataset = open_dataset(args.root, args.dataset, "train", train_transform(args.image_size))
    cfg = TrainConfig(
        loss=args.loss, mining=args.mining, margin=args.margin, beta=args.beta,
        classes_per_batch=args.classes_per_batch, samples_per_class=args.samples_per_class,
        small_classes=args.small_classes, epochs=args.epochs, batches_per_epoch=args.batches_per_epoch,
        lr=args.lr, head_lr_scale=args.head_lr_scale, weight_decay=args.weight_decay,
        freeze_bn=args.freeze_bn, amp=args.amp, seed=args.seed, num_workers=args.workers,
    )
    eval_set = None
    if args.eval:
        kind = "sop" if isinstance(dataset, StanfordOnlineProducts) else "folder"
        if kind == "folder" and not args.eval_root:
            raise ValueError("--eval on a folder-per-class dataset needs --eval-root")
        eval_set = open_dataset(args.eval_root or args.root, kind, "test", eval_transform(args.image_size))
    log = None if args.quiet else _log
    if log:
        log(f"training {args.backbone} (dim {model.out_dim}) on {len(dataset)} images of {dataset.num_classes} classes, device {device}")
    history = train_global(model, dataset, cfg, device=device, log=log)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    report: dict[str, Any] = {
        "model": model.cfg.to_dict(), "train": asdict(cfg), "dataset": {"root": os.path.abspath(args.root), "images": len(dataset), "classes": dataset.num_classes},
        "history": history,
    }
    model.save(args.out, meta={"train": asdict(cfg), "history": history})
    if eval_set is not None:
        recall = evaluate_global(model, eval_set, DEFAULT_KS, batch_size=args.batch_size, num_workers=args.workers, device=device)
        report["recall"] = {str(k): float(v) for k, v in recall.items()}
        print(f"{len(eval_set)} evaluation images: {_format_recall(recall)}")
    with open(os.path.splitext(args.out)[0] + ".yaml", "w") as f:
        yaml.safe_dump(json.loads(json.dumps(report)), f, sort_keys=False)
    print(f"wrote {args.out} (final loss {history[-1]['loss']:.4f})")
    return 0


def add_evaluate_global_arguments(parser: argparse.ArgumentParser) -> None:
    """Recall@k of a global-descriptor model on SOP or a folder-per-class dataset"""
    parser.add_argument("--root", required=True, help="dataset folder: Stanford Online Products (Ebay_test.txt) or one sub-folder per class")
    parser.add_argument("--dataset", choices=("auto", "sop", "folder"), default="auto", help="dataset format (default auto)")
    parser.add_argument("--split", choices=("train", "test"), default="test", help="SOP split (default test)")
    parser.add_argument("--checkpoint", default=None, help="checkpoint from `lit train-global`; without it, an ImageNet GeM baseline (--backbone, no head)")
    parser.add_argument("--backbone", default="efficientnet_lite0", help="backbone without --checkpoint (default efficientnet_lite0, packaged ImageNet weights)")
    parser.add_argument("--no-pretrained", action="store_true", help="without --checkpoint: random initialisation instead of ImageNet weights")
    parser.add_argument("--image-size", type=int, default=None, help="evaluation centre-crop size (default: the model's)")
    parser.add_argument("--ks", type=_ks, default=DEFAULT_KS, help="comma-separated k (default 1,10,100,1000; clipped to the database size)")
    parser.add_argument("--batch-size", type=int, default=64, help="default 64")
    parser.add_argument("--workers", type=int, default=0, help="data-loading processes (default 0)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N] (default auto)")
    parser.add_argument("--backend", choices=BACKENDS, default="torch", help="kNN backend (default torch; faiss needs faiss-cpu)")
    parser.add_argument("--chunk-size", type=int, default=None, help="queries per similarity block (default: automatic)")
    parser.add_argument("--json", default=None, help="write the results as JSON")


def evaluate_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """Load the model and data of ``add_evaluate_global_arguments`` and compute Recall@k.

    Returns:
        A JSON-ready dict: ``recall`` (``{k: fraction}`` with string keys), ``images``,
        ``classes``, ``model`` (config), ``checkpoint``, ``seconds`` (``extract``, ``knn``).
    """
    device = _device(args.device)
    if args.checkpoint:
        model = GlobalModel.load(args.checkpoint, device=device)
    else:
        model = GlobalModel(args.backbone, dim=None, pretrained=not args.no_pretrained).to(device)
    size = args.image_size or model.cfg.image_size
    dataset = open_dataset(args.root, args.dataset, args.split, eval_transform(size))
    t0 = time.perf_counter()
    emb = extract_embeddings(model, dataset, batch_size=args.batch_size, num_workers=args.workers, device=device)
    t1 = time.perf_counter()
    recall = recall_at_ks(emb.embeddings, emb.labels, args.ks, chunk_size=args.chunk_size, device=device, backend=args.backend)
    t2 = time.perf_counter()
    return {
        "dataset": {"root": os.path.abspath(args.root), "split": args.split, "images": len(dataset), "classes": dataset.num_classes},
        "checkpoint": os.path.abspath(args.checkpoint) if args.checkpoint else None,
        "model": model.cfg.to_dict(), "image_size": size, "device": str(device), "backend": args.backend,
        "recall": {str(k): v for k, v in recall.items()},
        "seconds": {"extract": t1 - t0, "knn": t2 - t1},
    }


def run_evaluate_global(args: argparse.Namespace) -> int:
    """Run ``lit evaluate-global``; returns the exit status."""
    result = evaluate_from_args(args)
    recall = {int(k): v for k, v in result["recall"].items()}
    print(f"{result['dataset']['images']} images, {result['dataset']['classes']} classes: {_format_recall(recall)}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


__all__ = [
    "Embeddings", "TrainConfig", "add_evaluate_global_arguments", "add_train_global_arguments",
    "build_loss", "evaluate_from_args", "evaluate_global", "extract_embeddings",
    "run_evaluate_global", "run_train_global", "train_global",
]
