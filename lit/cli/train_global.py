"""``lit train-global``: train a global-descriptor model (metric learning)."""

from __future__ import annotations

import argparse
import sys

NAME = "train-global"
HELP = "train a global-descriptor model (timm CNN, GeM, linear head) by metric learning"


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


def _log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _format_recall(recall: dict[int, float]) -> str:
    return "  ".join(f"R@{k} {100 * v:.2f}" for k, v in sorted(recall.items()))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..metric.data import SMALL_CLASSES
    from ..metric.train import LOSSES, MINING

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


def run(args: argparse.Namespace) -> int:
    import json
    import os
    from dataclasses import asdict
    from typing import Any

    import torch
    import yaml

    from .._device import resolve_device
    from ..metric.data import StanfordOnlineProducts, eval_transform, open_dataset, train_transform
    from ..metric.knn import DEFAULT_KS
    from ..metric.model import GlobalModel
    from ..metric.train import TrainConfig, evaluate_global, train_global

    device = resolve_device(args.device)
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
