"""`lit train` says what it trains on, keeps a log file, and says when the photos cap the tuples per epoch."""

import logging

import numpy as np
import yaml
from PIL import Image

from lit.train import train_from_config


def test_header_log_file_and_capped_queries(tmp_path, caplog):
    rng = np.random.default_rng(0)
    for i in range(12):
        (tmp_path / "photos" / f"s{i % 3}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (40, 52, 3), dtype=np.uint8)).save(tmp_path / "photos" / f"s{i % 3}" / f"{i}.png")
    cfg = {"model": {"backbone": {"name": "resnet18", "out_index": 3}, "lit": {"T": 2, "N": 8, "dim": 32},
                     "reduction_dim": 16, "runtime": {"image_size": 48}},
           "init": {"whitening_images": 8},
           "data": {"source": "folder", "root": str(tmp_path / "photos"), "image_size": 48, "queries_per_epoch": 100,
                    "pool_size": 8, "num_negatives": 1, "val_images": 3, "val_views": 1},
           "optim": {"epochs": 0}, "validate_every": 0, "seed": 0}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    with caplog.at_level(logging.INFO, logger="lit"):
        train_from_config(tmp_path / "c.yaml", tmp_path / "out", device="cpu")
    text = caplog.text
    assert "training on 9 photos (3 scenes or clusters)" in text and "3 held-out photos" in text
    assert "data.queries_per_epoch=100 but there are only 9 training queries" in text
    log = (tmp_path / "out" / "train.log").read_text()
    assert "training on 9 photos" in log


