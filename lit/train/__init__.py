"""Training super-feature models: the FIRe recipe on SfM-120k or on your own photos.

Command line (wired as ``lit train``; also ``python -m lit.train``)::

    lit train --config configs/own_photos.yaml --out runs/photos [--resume] [--device auto]
    torchrun --nproc_per_node 4 -m lit.train --config configs/fire_sfm120k.yaml --out runs/fire

Python::

    from lit.train import Trainer, load_config
    Trainer(load_config("configs/own_photos.yaml"), "runs/photos").fit()
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from .config import (
    DataConfig,
    InitConfig,
    LossConfig,
    OptimConfig,
    TrainConfig,
    ViewConfig,
    config_from_dict,
    config_to_dict,
    load_config,
    save_config,
)
from .ddp import DistContext
from .trainer import Trainer, TupleLoss, build_model, list_checkpoints, plot_metrics, tuple_loss
from .tuples import (
    ImageDatabase,
    TrainingTuple,
    TupleDataset,
    TupleSpec,
    ValidationSet,
    mine_hard_negatives,
    split_folder,
)
from .validation import average_precision, mean_average_precision, validation_map
from .views import SyntheticView, SyntheticViews, sample_homography, synthetic_view

__all__ = [
    "DataConfig", "DistContext", "ImageDatabase", "InitConfig", "LossConfig", "OptimConfig",
    "SyntheticView", "SyntheticViews", "TrainConfig", "Trainer", "TrainingTuple", "TupleDataset",
    "TupleLoss", "TupleSpec", "ValidationSet", "ViewConfig", "add_train_arguments",
    "average_precision", "build_model", "config_from_dict", "config_to_dict", "list_checkpoints",
    "load_config", "main", "mean_average_precision", "mine_hard_negatives", "plot_metrics",
    "run_train", "sample_homography", "save_config", "split_folder", "synthetic_view",
    "tuple_loss", "validation_map",
]


def add_train_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``lit train`` options to ``parser`` (returns it)."""
    parser.add_argument("--config", required=True, help="experiment file (.yaml, .yml or .toml)")
    parser.add_argument("--out", default=None, help="results folder (default: runs/<config name>)")
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config value, e.g. --set optim.lr=1e-4 (repeatable; values are YAML)",
    )
    return parser


def run_train(args: argparse.Namespace) -> int:
    """Run ``lit train`` with parsed arguments; returns the exit status."""
    import os

    cfg = load_config(args.config, overrides=getattr(args, "overrides", ()) or ())
    out = args.out or os.path.join("runs", os.path.splitext(os.path.basename(args.config))[0])
    Trainer(cfg, out, device=args.device, resume=args.resume).fit()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``lit train`` / ``python -m lit.train``."""
    parser = add_train_arguments(argparse.ArgumentParser(prog="lit train", description="Train a super-feature model."))
    args = parser.parse_args(argv)
    try:
        return run_train(args)
    except (ValueError, OSError) as err:
        parser.exit(2, f"lit train: error: {err}\n")
