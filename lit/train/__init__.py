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
    MIN_VALIDATION_IMAGES,
    DataConfig,
    InitConfig,
    LossConfig,
    OptimConfig,
    TrainConfig,
    ViewConfig,
    check_config,
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
    "average_precision", "build_model", "check_config", "config_from_dict", "config_to_dict", "list_checkpoints",
    "load_config", "main", "mean_average_precision", "mine_hard_negatives", "plot_metrics",
    "run_train", "sample_homography", "save_config", "split_folder", "synthetic_view",
    "tuple_loss", "validation_map",
]


def add_train_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``lit train`` options to ``parser`` (returns it)."""
    parser.add_argument("--config", required=True, help="experiment file (.yaml, .yml or .toml)")
    parser.add_argument("--out", default=None, help="results folder (default: runs/<config name>); "
                                                    "a non-empty one needs --resume or --overwrite")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the latest checkpoint in --out (says so and starts fresh when there is none)")
    parser.add_argument("--overwrite", action="store_true", help="delete the results already in --out and start fresh")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config value, e.g. --set optim.lr=1e-4 (repeatable; values are YAML)",
    )
    return parser


def _warn(msg: str) -> None:
    import sys

    print(f"lit train: warning: {msg}", file=sys.stderr, flush=True)


def _usable_cpus() -> int:
    import os

    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def prepare_out_dir(out: str, resume: bool = False, overwrite: bool = False) -> str | None:
    """Check (and with ``overwrite`` empty) a results folder before training.

    Returns:
        A message for the user when ``resume`` finds nothing to resume, else ``None``.

    Raises:
        ValueError: ``out`` holds files and neither ``resume`` nor ``overwrite`` is set,
            both are set, or ``out`` is a file.
    """
    import os
    import shutil

    from .trainer import list_checkpoints

    if resume and overwrite:
        raise ValueError("--resume and --overwrite exclude each other")
    if os.path.exists(out) and not os.path.isdir(out):
        raise ValueError(f"--out {out}: a file, not a folder")
    entries = sorted(os.listdir(out)) if os.path.isdir(out) else []
    if overwrite and entries:
        for name in entries:
            path = os.path.join(out, name)
            shutil.rmtree(path) if os.path.isdir(path) and not os.path.islink(path) else os.remove(path)
        return None
    shown = ", ".join(entries[:4]) + (", ..." if len(entries) > 4 else "")
    if resume:
        if list_checkpoints(out):
            return None
        if entries:  # outputs of a run that never finished an epoch: do not mix them with a new one
            raise ValueError(f"--resume: no checkpoint in {out}, but it holds files ({shown}): "
                             "pass --overwrite to start afresh there, or another --out")
        return f"--resume: no checkpoint in {out}, starting a fresh run"
    if entries:
        raise ValueError(
            f"--out {out} already holds results ({shown}): pass --resume to continue that run, "
            "--overwrite to replace it, or another --out"
        )
    return None


def run_train(args: argparse.Namespace) -> int:
    """Run ``lit train`` with parsed arguments; returns the exit status.

    Before anything is written: the configuration is read and checked
    (:func:`check_config`), ``--out`` is checked (:func:`prepare_out_dir`) and
    ``data.num_workers`` is capped by the CPUs this process may use. Progress lines are
    flushed line by line also when the output is redirected. A run that fails before its
    first epoch leaves no empty folder behind.
    """
    import os
    import sys

    from .._download import cleanup_new_dirs

    for stream in (sys.stdout, sys.stderr):  # progress visible at once in a log file
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(line_buffering=True)
    cfg = load_config(args.config, overrides=getattr(args, "overrides", ()) or ())
    for msg in check_config(cfg):
        _warn(msg)
    cpus = _usable_cpus()
    if cfg.data.num_workers > cpus:
        _warn(f"data.num_workers={cfg.data.num_workers} is more than the {cpus} CPUs here: using {cpus}")
        cfg = cfg.replace(**{"data.num_workers": cpus})
    out = args.out or os.path.join("runs", os.path.splitext(os.path.basename(args.config))[0])
    note = prepare_out_dir(out, resume=args.resume, overwrite=getattr(args, "overwrite", False))
    if note:
        print(note, flush=True)
    with cleanup_new_dirs(out):
        trainer = Trainer(cfg, out, device=args.device, resume=args.resume)
    vset = trainer.validation
    if vset is not None and cfg.validate_every and len(vset.db_paths) < MIN_VALIDATION_IMAGES:
        _warn(f"validation on {len(vset.db_paths)} images ({len(vset.queries)} queries): its mAP is noisy and "
              f"saturates at 100; hold out at least {MIN_VALIDATION_IMAGES} (data.val_images)")
    trainer.fit()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``lit train`` / ``python -m lit.train``."""
    parser = add_train_arguments(argparse.ArgumentParser(prog="lit train", description="Train a super-feature model."))
    args = parser.parse_args(argv)
    try:
        return run_train(args)
    except (ValueError, OSError) as err:
        parser.exit(2, f"lit train: error: {err}\n")
