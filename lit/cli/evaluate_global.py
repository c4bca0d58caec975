"""``lit evaluate-global``: Recall@k of a global-descriptor model."""

from __future__ import annotations

import argparse
import json

NAME = "evaluate-global"
HELP = "Recall@k of a global-descriptor model on SOP or a folder-per-class dataset"


def _ks(text: str) -> tuple[int, ...]:
    try:
        ks = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--ks must be comma-separated integers, got {text!r}") from None
    if not ks or min(ks) < 1:
        raise argparse.ArgumentTypeError(f"--ks must be positive, got {text!r}")
    return ks


def _format_recall(recall: dict) -> str:
    return "  ".join(f"R@{k} {100 * v:.2f}" for k, v in sorted(recall.items(), key=lambda kv: int(kv[0])))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..metric.options import BACKENDS, DATASET_KINDS, DEFAULT_KS

    parser.add_argument("--root", required=True, help="dataset folder: Stanford Online Products (Ebay_test.txt) or one sub-folder per class")
    parser.add_argument("--dataset", choices=DATASET_KINDS, default="auto", help="dataset format (default auto)")
    parser.add_argument("--split", choices=("train", "test"), default="test", help="SOP split (default test)")
    parser.add_argument("--checkpoint", default=None, help="checkpoint from `lit train-global`; without it, an ImageNet GeM baseline (--backbone, no head)")
    parser.add_argument("--backbone", default="efficientnet_lite0", help="backbone without --checkpoint (default efficientnet_lite0, packaged ImageNet weights)")
    parser.add_argument("--no-pretrained", action="store_true", help="without --checkpoint: random initialisation instead of ImageNet weights")
    parser.add_argument("--image-size", type=int, default=None, help="evaluation centre-crop size (default: the model's)")
    parser.add_argument("--ks", type=_ks, default=DEFAULT_KS, help="comma-separated k (default 1,10,100,1000; clipped to the database size)")
    parser.add_argument("--batch-size", type=int, default=64, help="default 64")
    parser.add_argument("--workers", type=int, default=0, help="data-loading processes (default 0)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N] (default auto)")
    parser.add_argument("--backend", choices=BACKENDS, default="torch", help="exact kNN backend (default torch; faiss: faiss-cpu's exact search)")
    parser.add_argument("--chunk-size", type=int, default=None, help="queries per similarity block (default: automatic)")
    parser.add_argument("--json", default=None, help="write the results as JSON")


def run(args: argparse.Namespace) -> int:
    from ..metric.train import evaluate_dataset

    result = evaluate_dataset(args.root, kind=args.dataset, split=args.split, checkpoint=args.checkpoint,
                              backbone=args.backbone, pretrained=not args.no_pretrained, image_size=args.image_size,
                              ks=args.ks, batch_size=args.batch_size, workers=args.workers, device=args.device,
                              backend=args.backend, chunk_size=args.chunk_size)
    print(f"{result['dataset']['images']} images, {result['dataset']['classes']} classes: {_format_recall(result['recall'])}")
    if args.json:
        from .._fileio import atomic_write

        with atomic_write(args.json) as f:
            json.dump(result, f, indent=1)
    return 0
