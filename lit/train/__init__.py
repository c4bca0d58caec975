"""Training super-feature models: the FIRe recipe on SfM-120k or on your own photos.

Command line (``lit train``; also ``python -m lit.train``)::

    lit train --config configs/own_photos.yaml --out runs/photos [--resume] [--device auto]
    torchrun --nproc_per_node 4 -m lit.train --config configs/fire_sfm120k.yaml --out runs/fire

Python::

    from lit.train import Trainer, load_config
    Trainer(load_config("configs/own_photos.yaml"), "runs/photos").fit()
"""

from __future__ import annotations

from .config import (
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
from .run import prepare_out_dir, train_from_config
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
    "TupleLoss", "TupleSpec", "ValidationSet", "ViewConfig",
    "average_precision", "build_model", "check_config", "config_from_dict", "config_to_dict", "list_checkpoints",
    "load_config", "mean_average_precision", "mine_hard_negatives", "plot_metrics",
    "prepare_out_dir", "sample_homography", "save_config", "split_folder", "synthetic_view",
    "train_from_config", "tuple_loss", "validation_map",
]
