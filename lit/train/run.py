"""One training run from a configuration file: what ``lit train`` calls.

:func:`train_from_config` reads and checks the configuration, checks the results folder
(:func:`prepare_out_dir`), caps ``data.num_workers`` by the CPUs this process may use, and
trains; remarks go to this module's logger (the command line prints them as warnings).
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Sequence

from .._download import cleanup_new_dirs
from ..errors import UsageError
from .config import MIN_VALIDATION_IMAGES, check_config, load_config
from .trainer import Trainer, list_checkpoints

log = logging.getLogger(__name__)

__all__ = ["prepare_out_dir", "train_from_config", "usable_cpus"]


def usable_cpus() -> int:
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def prepare_out_dir(out: str, resume: bool = False, overwrite: bool = False) -> str | None:
    """Check (and with ``overwrite`` empty) a results folder before training.

    Returns:
        A message for the user when ``resume`` finds nothing to resume, else ``None``.

    Raises:
        UsageError: ``out`` holds files and neither ``resume`` nor ``overwrite`` is set,
            both are set, or ``out`` is a file.
    """
    if resume and overwrite:
        raise UsageError("--resume and --overwrite exclude each other")
    if os.path.exists(out) and not os.path.isdir(out):
        raise UsageError(f"--out {out}: a file, not a folder")
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
            raise UsageError(f"--resume: no checkpoint in {out}, but it holds files ({shown}): "
                             "pass --overwrite to start afresh there, or another --out")
        return f"--resume: no checkpoint in {out}, starting a fresh run"
    if entries:
        raise UsageError(
            f"--out {out} already holds results ({shown}): pass --resume to continue that run, "
            "--overwrite to replace it, or another --out"
        )
    return None


def train_from_config(config: str | os.PathLike, out: str | os.PathLike | None = None, *,
                      overrides: Sequence[str] = (), resume: bool = False, overwrite: bool = False,
                      device: str = "auto") -> Trainer:
    """Train the model a configuration file describes; returns the finished :class:`Trainer`.

    Before anything is written: the configuration is read and checked
    (:func:`check_config`, remarks logged as warnings), ``out`` is checked
    (:func:`prepare_out_dir`) and ``data.num_workers`` is capped by the CPUs this process
    may use. A run that fails before its first epoch leaves no empty folder behind.

    Args:
        config: the experiment file (.yaml, .yml or .toml).
        out: results folder (default ``runs/<config name>``).
        overrides: ``KEY=VALUE`` changes to the configuration (values are YAML).
        resume, overwrite: what to do with a results folder that holds files.
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
    """
    config = os.fspath(config)
    cfg = load_config(config, overrides=overrides)
    for msg in check_config(cfg):
        log.warning(msg)
    cpus = usable_cpus()
    if cfg.data.num_workers > cpus:
        log.warning(f"data.num_workers={cfg.data.num_workers} is more than the {cpus} CPUs here: using {cpus}")
        cfg = cfg.replace(**{"data.num_workers": cpus})
    out = os.fspath(out) if out is not None else os.path.join("runs", os.path.splitext(os.path.basename(config))[0])
    note = prepare_out_dir(out, resume=resume, overwrite=overwrite)
    if note:
        log.info(note)
    log.info(f"lit train: {config} -> {out}; building the model and the data (k-means and whitening on the "
             "training photos can take a minute)")
    with cleanup_new_dirs(out):
        trainer = Trainer(cfg, out, device=device, resume=resume)
    handler = _log_file(trainer)
    try:
        _header(trainer)
        vset = trainer.validation
        if vset is not None and cfg.validate_every and len(vset.db_paths) < MIN_VALIDATION_IMAGES:
            log.warning(f"validation on {len(vset.db_paths)} images ({len(vset.queries)} queries): its mAP is noisy and "
                        f"saturates at 100; hold out at least {MIN_VALIDATION_IMAGES} (data.val_images)")
        trainer.fit()
    finally:
        if handler is not None:
            logging.getLogger("lit").removeHandler(handler)
            handler.close()
    return trainer


def _log_file(trainer: Trainer) -> logging.Handler | None:
    """Everything lit logs during training also goes to ``train.log`` in the results folder
    (main process), appended on ``--resume``."""
    if not trainer.dist.is_main:
        return None
    handler = logging.FileHandler(trainer.out_dir / "train.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    handler.setLevel(logging.INFO)
    logger = logging.getLogger("lit")
    logger.addHandler(handler)
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    return handler


def _header(trainer: Trainer) -> None:
    """What the run trains on: photos, scenes, the validation split, tuples per epoch."""
    cfg, ds, vset = trainer.cfg, trainer.dataset, trainer.validation
    n = len(ds.db)
    scenes = len(set(ds.db.clusters))
    o, d = cfg.optim, cfg.data
    per_epoch = min(d.queries_per_epoch, n) if ds.db.pairs is None else min(d.queries_per_epoch, len(ds.db.pairs))
    steps = per_epoch // o.tuples_per_step
    log.info(f"training on {n} photos ({scenes} scenes or clusters) from {d.root or d.source}; validation: "
             + (f"{len(vset.db_paths)} held-out photos, {len(vset.queries)} queries" if vset is not None else "none")
             + f"; {steps * o.tuples_per_step} tuples per epoch ({steps} steps of {o.tuples_per_step}), "
             f"{o.epochs} epochs; log in {trainer.out_dir / 'train.log'}")
    if per_epoch < d.queries_per_epoch:
        log.warning(f"data.queries_per_epoch={d.queries_per_epoch} but there are only {per_epoch} training queries: "
                    f"each epoch uses every one once ({steps * o.tuples_per_step} tuples)")
