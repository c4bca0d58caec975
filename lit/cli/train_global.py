"""``lit train-global``: train a global-descriptor model (metric learning)."""

from __future__ import annotations

import argparse

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


def _format_recall(recall: dict) -> str:
    return "  ".join(f"R@{k} {100 * v:.2f}" for k, v in sorted(recall.items(), key=lambda kv: int(kv[0])))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..metric.options import DATASET_KINDS, LOSSES, MINING, SMALL_CLASSES

    parser.add_argument("--root", required=True, help="dataset folder: Stanford Online Products (Ebay_train.txt) or one sub-folder per class")
    parser.add_argument("--dataset", choices=DATASET_KINDS, default="auto", help="dataset format (default auto: sop when ROOT/Ebay_train.txt exists)")
    parser.add_argument("--out", required=True, help="output checkpoint (.pt); the configuration and history go to the same name with .yaml")
    parser.add_argument("--backbone", default="resnet50", help="timm model name (default resnet50; efficientnet_lite0 with --pretrained uses the packaged weights)")
    parser.add_argument("--out-index", type=int, default=-1, help="feature stage to pool (default -1: the last)")
    parser.add_argument("--dim", type=_dim, default=512, help="descriptor dimension, or 'none' for no head (default 512)")
    parser.add_argument("--pretrained", action="store_true", help="start from ImageNet weights")
    parser.add_argument("--image-size", type=int, default=224, help="training crop and evaluation size (default 224)")
    parser.add_argument("--loss", choices=LOSSES, default="triplet", help="pytorch-metric-learning loss (default triplet)")
    parser.add_argument("--mining", choices=MINING, default="semihard", help="triplet mining (default semihard)")
    parser.add_argument("--margin", type=float, default=None, help="triplet/contrastive margin or margin-loss alpha (default 0.1, 0.5, 0.2)")
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
    import logging

    from ..metric.train import TrainConfig, train_dataset

    cfg = TrainConfig(
        loss=args.loss, mining=args.mining, margin=args.margin, beta=args.beta,
        classes_per_batch=args.classes_per_batch, samples_per_class=args.samples_per_class,
        small_classes=args.small_classes, epochs=args.epochs, batches_per_epoch=args.batches_per_epoch,
        lr=args.lr, head_lr_scale=args.head_lr_scale, weight_decay=args.weight_decay,
        freeze_bn=args.freeze_bn, amp=args.amp, seed=args.seed, num_workers=args.workers,
    )
    progress = logging.getLogger("lit.metric")
    level = progress.level
    if args.quiet:
        progress.setLevel(logging.WARNING)
    try:
        report = train_dataset(
            args.root, args.out, cfg, kind=args.dataset, backbone=args.backbone, out_index=args.out_index,
            dim=args.dim, pretrained=args.pretrained, image_size=args.image_size, evaluate=args.eval,
            eval_root=args.eval_root, batch_size=args.batch_size, device=args.device,
        )
    finally:
        progress.setLevel(level)
    if "recall" in report:
        print(f"{report['eval_images']} evaluation images: {_format_recall(report['recall'])}")
    print(f"wrote {report['checkpoint']} (final loss {report['history'][-1]['loss']:.4f})")
    return 0
