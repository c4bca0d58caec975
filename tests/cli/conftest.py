"""Fixtures of the command-line tests."""


import pytest
import torch
from cli_runner import run_lit as run
from photo_folders import two_scene_photos

from lit.models import SuperFeatureModel, save_checkpoint


@pytest.fixture(scope="session")
def collection(tmp_path_factory):
    """Built once for the command-line tests: two scenes of two photos (crops of two bundled photos), a tiny model, its features
    and an index built with the defaults; and a second model with other weights."""
    from lit.models import BackboneConfig, LITConfig, ModelConfig, RuntimeConfig

    tmp = tmp_path_factory.mktemp("clipipe")
    cfg = ModelConfig(backbone=BackboneConfig("resnet18", 3), lit=LITConfig(T=2, N=8, dim=32), reduction_dim=16,
                      runtime=RuntimeConfig(image_size=96, features_num=20, scales=(1.0, 0.707, 0.5)))
    paths = {}
    for seed in (0, 1):
        torch.manual_seed(seed)
        paths[seed] = tmp / f"model{seed}.pt"
        save_checkpoint(SuperFeatureModel(cfg).eval(), paths[seed])
    photos = two_scene_photos(tmp / "photos")
    feats = tmp / "feats.h5"
    run("extract", photos, "--out", feats, "--model", paths[0], "--device", "cpu", "--quiet")
    index = tmp / "index.h5"
    proc = run("index", feats, "--out", index, "--device", "cpu", "--image-root", photos)
    return {"tmp": tmp, "models": paths, "photos": photos, "feats": feats, "index": index, "index_log": proc}
