"""lit.train.config: configurations round-trip through YAML and TOML, name the bad key, and the example configs load."""

from __future__ import annotations

import os

import pytest
from paths import REPO
from photo_folders import random_photos
from training import tiny_config_dict

import lit
from lit.train import (
    config_from_dict,
    config_to_dict,
    load_config,
    save_config,
)


# ---------------------------------------------------------------------- config
def test_config_round_trips_through_yaml_and_toml(tmp_path):
    cfg = config_from_dict(tiny_config_dict("photos", data={"mining_scales": [1.0, 0.707]}, loss={"ratio": None}))
    save_config(cfg, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == cfg
    assert config_from_dict(config_to_dict(cfg)) == cfg
    (tmp_path / "c.toml").write_text('seed = 3\n[optim]\nlr = 1e-4\n[data]\nsource = "folder"\nroot = "p"\n')
    t = load_config(tmp_path / "c.toml", overrides=["optim.epochs=7", "data.mining_scales=[1, 0.5]"])
    assert (t.seed, t.optim.lr, t.optim.epochs, t.data.mining_scales) == (3, 1e-4, 7, (1.0, 0.5))
    assert t.model is None and t.optim.tuples_per_step == 5 and t.loss.superfeature_weight == 0.02


def test_config_errors_name_the_bad_key(tmp_path):
    with pytest.raises(ValueError, match=r"'optim\.learning_rate'"):
        config_from_dict({"optim": {"learning_rate": 1e-3}})
    with pytest.raises(ValueError, match=r"'bogus'"):
        config_from_dict({"bogus": 1})
    with pytest.raises(ValueError, match=r"data\.views\.hue"):
        config_from_dict({"data": {"views": {"hue": "high"}}})
    with pytest.raises(ValueError, match=r"loss\.space"):
        config_from_dict({"loss": {"space": "pixels"}})
    with pytest.raises(ValueError, match="unknown keys in lit config"):
        config_from_dict({"model": {"lit": {"heads": 4}}})
    with pytest.raises(ValueError, match="output_stride"):
        config_from_dict({"model": {"backbone": {"name": "resnet50", "output_stride": 12}}})
    (tmp_path / "bad.yaml").write_text("optim:\n  lr: 1e-4\n  moment: 0.9\n")
    with pytest.raises(ValueError, match=r"bad\.yaml.*optim\.moment"):
        load_config(tmp_path / "bad.yaml")


@pytest.mark.parametrize("name", ["fire_sfm120k.yaml", "own_photos.yaml"])
def test_example_configs_load(name):
    cfg = load_config(os.path.join(REPO, "configs", name))
    assert cfg.optim.tuples_per_step == 5 and cfg.data.num_negatives == 5


def test_numbers_without_a_dot_are_numbers(tmp_path):
    (tmp_path / "c.yaml").write_text("optim:\n  lr: 3e-5\n  backbone_lr: 1E-6\n")
    cfg = load_config(tmp_path / "c.yaml", overrides=["optim.weight_decay=5e-4"])
    assert (cfg.optim.lr, cfg.optim.backbone_lr, cfg.optim.weight_decay) == (3e-5, 1e-6, 5e-4)
    with pytest.raises(ValueError, match=r"optim\.lr.*'3e-5x'"):
        load_config(tmp_path / "c.yaml", overrides=["optim.lr=3e-5x"])


def test_own_photos_config_starts_from_an_installed_model(tmp_path):
    from lit.train import Trainer, check_config, load_config

    random_photos(tmp_path / "p", 12)
    cfg = load_config(os.path.join(REPO, "configs", "own_photos.yaml"), overrides=[f"data.root={tmp_path / 'p'}"])
    assert cfg.init.checkpoint == lit.DEFAULT_MODEL and lit.DEFAULT_MODEL in lit.list_models()
    assert check_config(cfg) == []
    trainer = Trainer(cfg.replace(**{"data.val_images": 2, "data.num_workers": 0}), tmp_path / "run", device="cpu",
                      log=lambda _: None)  # builds from lit-effl0 without any download
    assert trainer.model.cfg.lit.N == 64 and trainer.model.has_reduction
