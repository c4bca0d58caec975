"""A model fine-tuned by the trainer keeps its match rule, and training says how the rule fits."""

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

import lit
from lit.matching import MatchRule
from lit.models import BackboneConfig, LITConfig, ModelConfig, RuntimeConfig, SuperFeatureModel
from lit.models.checkpoint import safe_load, save_checkpoint
from lit.train import Trainer
from lit.train.config import config_from_dict


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: much faster on a busy 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _photos(folder, n=12, size=(64, 51)):
    rng = np.random.default_rng(0)
    for i in range(n):
        img = Image.fromarray((rng.random((4, 5, 3)) * 255).astype(np.uint8)).resize(size, Image.BICUBIC)
        draw = ImageDraw.Draw(img)
        for _ in range(4):
            x0, y0 = (int(v) for v in rng.integers(0, 40, 2))
            draw.ellipse([x0, y0, x0 + 20, y0 + 15], fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
        sub = folder / f"scene{i % 4}"
        sub.mkdir(parents=True, exist_ok=True)
        img.save(sub / f"photo{i:02d}.png")


def test_fine_tuned_checkpoint_keeps_the_rule_and_training_reports_its_fit(tmp_path):
    torch.manual_seed(0)
    base = SuperFeatureModel(ModelConfig(backbone=BackboneConfig("resnet18", 3), lit=LITConfig(T=2, N=8, dim=32),
                                         reduction_dim=16, runtime=RuntimeConfig(image_size=64, scales=(1.0,))))
    base.set_match_rule(MatchRule(threshold=None, margin=0.05, background=torch.randn(40, 16)))
    save_checkpoint(base, tmp_path / "base.pt")
    _photos(tmp_path / "photos")
    cfg = config_from_dict({
        "init": {"checkpoint": str(tmp_path / "base.pt"), "whitening_images": 8},
        "data": {"source": "folder", "root": str(tmp_path / "photos"), "image_size": 48, "queries_per_epoch": 5,
                 "pool_size": 8, "num_negatives": 1, "val_images": 4, "val_views": 1},
        "optim": {"epochs": 1, "lr": 3e-4}, "validate_every": 1, "seed": 0,
    })
    logs = []
    Trainer(cfg, tmp_path / "out", device="cpu", log=logs.append).fit()
    tuned = lit.load_model(str(tmp_path / "out" / "model.pt"))
    rule = tuned.match_rule()
    assert (rule.threshold, rule.margin) == (None, 0.05)
    torch.testing.assert_close(rule.background, base.match_background)
    check = safe_load(tmp_path / "out" / "model.pt")["meta"]["match_rule_check"]
    assert check["before"]["same_place_pairs"] == check["after"]["same_place_pairs"] > 0
    assert check["after"]["different_place_pairs"] > 0
    line = next(m for m in logs if m.startswith("match rule (cosine >= best background cosine + 0.05"))
    assert "same-place pairs matched" in line and "before training" in line
