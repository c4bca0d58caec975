"""Official FIRe checkpoints, lit checkpoints, key conversion and safety."""

import os
import pathlib
import pickle
import re

import pytest
import torch

import lit
from lit.models import (
    CheckpointError,
    LITConfig,
    ModelConfig,
    SuperFeatureModel,
    convert_fire_state_dict,
    save_checkpoint,
    save_fire_checkpoint,
    to_fire_state_dict,
)
from lit.models.checkpoint import config_from_fire_params, fire_params_from_config


def test_resnet50_keys_follow_the_official_layout():
    model = SuperFeatureModel(ModelConfig(lit=LITConfig(T=1, N=4, dim=16)))
    fire_keys = set(to_fire_state_dict(model.state_dict()))
    for key in ("features.0.weight", "features.1.running_mean", "features.4.0.conv1.weight",
                "features.4.0.downsample.0.weight", "features.5.3.bn3.weight", "features.6.5.conv3.weight",
                "lit.templates_init", "lit.project_q.weight", "lit.project_k.weight", "lit.project_v.weight",
                "lit.norm_inputs.weight", "lit.norm_templates.bias", "lit.norm_mlp.weight", "lit.mlp.0.weight",
                "lit.mlp.2.bias", "dim_reduction.weight", "dim_reduction.bias"):
        assert key in fire_keys, key
    assert not any(k.startswith("features.7") for k in fire_keys)  # no last stage
    prefixes = {re.match(r"features\.(\d+)\.", k).group(1) for k in fire_keys if k.startswith("features.")}
    assert prefixes == {"0", "1", "4", "5", "6"}
    assert model.state_dict()["dim_reduction.weight"].shape == (128, 16, 1, 1)
    assert model.lit.templates_init.shape == (1, 4, 16)


def test_key_conversion_round_trip(tiny_model):
    sd = tiny_model.state_dict()
    fire = to_fire_state_dict(sd)
    back = convert_fire_state_dict({**fire, "fc.weight": torch.zeros(3), "fc.bias": torch.zeros(3)})
    assert back.keys() == sd.keys()
    assert all(torch.equal(back[k], sd[k]) for k in sd)
    dp = convert_fire_state_dict({"module." + k: v for k, v in fire.items()})
    assert dp.keys() == sd.keys()


def test_net_params_round_trip(tiny_cfg):
    assert config_from_fire_params(fire_params_from_config(tiny_cfg)) == tiny_cfg


def _official(tmp_path, model, name="fire.pth", pathlib_pretrained=True, drop_reduction=False, extra=None):
    path = tmp_path / name
    save_fire_checkpoint(model, path, epoch=200)
    ckpt = torch.load(path, weights_only=False)  # our own file, written just above
    if pathlib_pretrained:  # the official file most likely stores a pathlib path
        ckpt["net_params"]["pretrained"] = pathlib.PosixPath("/data/fire_imagenet.pth")
    if drop_reduction:
        ckpt["state_dict"] = {k: v for k, v in ckpt["state_dict"].items() if not k.startswith("dim_reduction")}
        ckpt["net_params"]["dim_reduction"] = {}
    ckpt["state_dict"].update(extra or {})
    torch.save(ckpt, path)
    return path


def test_official_checkpoint_loads_and_reproduces_outputs(tmp_path, tiny_model):
    path = _official(tmp_path, tiny_model)
    with pytest.raises(pickle.UnpicklingError):  # plain weights_only refuses the pathlib object
        torch.load(path, weights_only=True)
    loaded = lit.load_model(path)
    assert loaded.cfg == tiny_model.cfg
    image = torch.rand(3, 70, 90)
    a, b = tiny_model.extract(image), loaded.extract(image)
    torch.testing.assert_close(a.descriptors, b.descriptors, rtol=0, atol=0)
    torch.testing.assert_close(a.strengths, b.strengths, rtol=0, atol=0)


def test_imagenet_checkpoint_without_reduction(tmp_path, tiny_model):
    path = _official(tmp_path, tiny_model, "fire_imagenet.pth", drop_reduction=True,
                     extra={"fc.weight": torch.zeros(10, 512), "fc.bias": torch.zeros(10)})
    with pytest.warns(UserWarning, match="no dimensionality reduction"):
        model = lit.load_model(path)
    assert not model.has_reduction
    with pytest.raises(RuntimeError, match="init_reduction"):
        model.extract(torch.rand(3, 64, 64))


def test_lit_checkpoint_round_trip(tmp_path, tiny_model):
    path = tmp_path / "model.pt"
    save_checkpoint(tiny_model, path, meta={"epoch": 3})
    loaded = lit.load_model(str(path))
    assert loaded.cfg == tiny_model.cfg
    for k, v in tiny_model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    half = tmp_path / "half.pt"
    save_checkpoint(tiny_model, half, half=True)
    assert os.path.getsize(half) < os.path.getsize(path)
    lh = lit.load_model(half)
    image = torch.rand(3, 64, 64)
    torch.testing.assert_close(lh.extract(image).strengths, tiny_model.extract(image).strengths, rtol=2e-2, atol=1e-2)


def test_mismatched_checkpoint_lists_keys(tmp_path, tiny_model):
    sd = to_fire_state_dict(tiny_model.state_dict())
    sd.pop("lit.project_q.weight")
    sd["lit.extra.weight"] = torch.zeros(2)
    sd["lit.templates_init"] = torch.zeros(1, 9, 32)
    path = tmp_path / "bad.pth"
    torch.save({"state_dict": sd, "net_params": fire_params_from_config(tiny_model.cfg)}, path)
    with pytest.raises(CheckpointError) as err:
        lit.load_model(path)
    msg = str(err.value)
    assert "missing keys (1): lit.project_q.weight" in msg
    assert "unexpected keys (1): lit.extra.weight" in msg
    assert "lit.templates_init: checkpoint (1, 9, 32) vs model (1, 8, 32)" in msg
    assert str(path) in msg


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch " + os.environ["LIT_EVIL_MARKER"],))


def test_malicious_checkpoint_is_refused_and_runs_nothing(tmp_path, monkeypatch, tiny_model):
    marker = tmp_path / "pwned"
    monkeypatch.setenv("LIT_EVIL_MARKER", str(marker))
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": to_fire_state_dict(tiny_model.state_dict()), "net_params": _Evil()}, path)
    with pytest.raises(CheckpointError, match="refused: loading this file would import posix.system") as err:
        lit.load_model(path)
    assert "may run code" in str(err.value)
    assert "weights_only" not in str(err.value) and "\n" not in str(err.value)  # never advise lifting the safety
    assert not marker.exists()


def test_refusal_messages_say_what_the_file_is(tmp_path):
    """Every checkpoint loading error is one sentence, never 'weights_only=False'."""
    import pickle

    plain = tmp_path / "plain.pkl"
    plain.write_bytes(pickle.dumps({"a": [1, 2], "b": "text"}))
    text = tmp_path / "notes.pt"
    text.write_text("hello\n")
    binary = tmp_path / "noise.pt"
    binary.write_bytes(bytes(range(256)) * 4)
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    good = tmp_path / "good.pt"
    torch.save({"w": torch.zeros(3)}, good)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:300])
    cases = {plain: "a plain Python pickle of a dict, not a PyTorch checkpoint", text: "a text file, not a PyTorch checkpoint",
             binary: "not a PyTorch checkpoint", empty: "empty file", truncated: "damaged or truncated PyTorch checkpoint"}
    for path, expected in cases.items():
        with pytest.raises(CheckpointError) as err:
            lit.load_model(path)
        msg = str(err.value)
        assert msg.startswith(f"{path}: ") and expected in msg, msg
        assert "weights_only" not in msg and "\n" not in msg and len(msg) < 300
    from lit.models.checkpoint import safe_load

    assert torch.equal(safe_load(good)["w"], torch.zeros(3))


def test_not_a_checkpoint(tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pth"):
        lit.load_model(junk)
    other = tmp_path / "other.pth"
    torch.save({"weights": torch.zeros(2)}, other)
    with pytest.raises(CheckpointError, match="neither a lit checkpoint nor an official FIRe"):
        lit.load_model(other)
    with pytest.raises(ValueError, match="neither an existing checkpoint file nor a registered"):
        lit.load_model("no-such-model")


# ---------------------------------------------------------------------- format version 2: the match rule
def _with_background_rule(model, margin=0.1, rows=5):
    from lit.matching import MatchRule

    bank = torch.randn(rows, model.cfg.descriptor_dim, generator=torch.Generator().manual_seed(1))
    model.set_match_rule(MatchRule(threshold=None, margin=margin, background=bank))
    return bank


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_fine_tuned_checkpoint_keeps_its_match_rule(tmp_path, tiny_model, suffix):
    bank = _with_background_rule(tiny_model, margin=0.07)
    path = tmp_path / f"tuned{suffix}"
    save_checkpoint(tiny_model, path, meta={"epoch": 2})
    loaded = lit.load_model(path)
    assert loaded.cfg == tiny_model.cfg and loaded.cfg.match.background_size == 5
    rule = loaded.match_rule()
    assert rule.threshold is None and rule.margin == 0.07 and torch.equal(rule.background, bank)
    assert loaded.meta == {"epoch": 2}
    plain = loaded.match_rule(threshold=0.9, margin=None)  # overrides: FIRe's plain rule
    assert plain.threshold == 0.9 and plain.background is None


def test_trainer_checkpoint_of_a_model_with_a_rule_keeps_it(tmp_path, tiny_model):
    """What ``lit train`` writes (lit.train.trainer: ``save_checkpoint`` at the end, the same
    config and state dict in each resumable checkpoint) carries the rule of the model it
    fine-tunes, and a resumed model is rebuilt with it."""
    from lit.models import ModelConfig, SuperFeatureModel
    from lit.models.checkpoint import LIT_FORMAT, LIT_FORMAT_VERSION, load_state_dict_checked

    bank = _with_background_rule(tiny_model)
    resumable = {"format": LIT_FORMAT, "version": LIT_FORMAT_VERSION, "config": tiny_model.cfg.to_dict(),
                 "state_dict": tiny_model.state_dict()}  # the layout of Trainer.checkpoint_state
    rebuilt = SuperFeatureModel(ModelConfig.from_dict(resumable["config"]))
    load_state_dict_checked(rebuilt, resumable["state_dict"])
    assert torch.equal(rebuilt.match_rule().background, bank) and rebuilt.cfg.match == tiny_model.cfg.match


def test_version_1_checkpoint_loads_with_fires_rule(tmp_path, tiny_model):
    cfg = tiny_model.cfg.to_dict()
    del cfg["match"]
    path = tmp_path / "v1.pt"
    torch.save({"format": "lit", "version": 1, "config": cfg, "state_dict": tiny_model.state_dict(), "meta": {}}, path)
    loaded = lit.load_model(path)
    rule = loaded.match_rule()
    assert rule.threshold == 0.9 and rule.margin is None and rule.background is None
    assert loaded.cfg == tiny_model.cfg


def test_official_fire_checkpoint_has_fires_plain_rule(tmp_path, tiny_model):
    rule = lit.load_model(_official(tmp_path, tiny_model)).match_rule()
    assert (rule.threshold, rule.margin, rule.background) == (0.9, None, None)


def test_newer_version_is_refused_saying_to_update(tmp_path, tiny_model):
    path = tmp_path / "v9.pt"
    torch.save({"format": "lit", "version": 9, "config": tiny_model.cfg.to_dict(), "state_dict": {}}, path)
    with pytest.raises(CheckpointError, match="version 9.*update lit"):
        lit.load_model(path)


def test_safetensors_file_holds_config_and_meta_and_only_tensors(tmp_path, tiny_model):
    import json

    from safetensors import safe_open

    _with_background_rule(tiny_model)
    path = tmp_path / "m.safetensors"
    save_checkpoint(tiny_model, path, meta={"recipe": "x"}, half=True)
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
        keys = set(f.keys())
    assert meta["format"] == "lit" and meta["version"] == "2" and json.loads(meta["meta"]) == {"recipe": "x"}
    assert json.loads(meta["config"])["match"] == {"threshold": None, "margin": 0.1, "background_size": 5}
    assert keys == set(tiny_model.state_dict()) and "match_background" in keys
    other = tmp_path / "other.safetensors"
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(other))
    with pytest.raises(CheckpointError, match="not a lit checkpoint"):
        lit.load_model(other)
    truncated = tmp_path / "cut.safetensors"
    truncated.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(CheckpointError, match="damaged or truncated"):
        lit.load_model(truncated)
    from lit.models.checkpoint import safe_load

    with pytest.raises(CheckpointError, match="a safetensors file"):
        safe_load(path)


def test_lit_effl0_pt_and_safetensors_give_identical_features(tmp_path):
    """The shipped safetensors file and a .pt written from it (float16, as shipped before)
    give the same model: same weights, rule and features, bit for bit."""
    model = lit.load_model("lit-effl0")
    pt = tmp_path / "lit-effl0.pt"
    save_checkpoint(model, pt, half=True)
    other = lit.load_model(pt)
    for key, value in model.state_dict().items():
        assert torch.equal(value, other.state_dict()[key]), key
    image = torch.rand(3, 96, 128, generator=torch.Generator().manual_seed(0))
    a, b = model.extract(image), other.extract(image)
    assert torch.equal(a.descriptors, b.descriptors) and torch.equal(a.strengths, b.strengths)
    assert torch.equal(model.match_rule().background, other.match_rule().background)
    assert model.meta["match_background"]["photos"] == other.meta["match_background"]["photos"]


def test_shipped_lit_effl0_carries_its_calibrated_rule():
    """lit-effl0's rule lives in its file: the background test (margin 0.1, no cosine floor)
    against 7424 super-features of 29 training photos, none of a held-out scene or of a
    scene of the bundled photos (provenance in the file's meta)."""
    from lit.bench.multiview import LIT_EFFL0_HELD_OUT

    model = lit.load_model("lit-effl0")
    rule = model.match_rule()
    assert rule.threshold is None and rule.margin == 0.1 and rule.background.shape == (7424, 128)
    prov = model.meta["match_background"]
    assert len(prov["photos"]) == 29 and sum(prov["rows"]) == 7424
    scenes = {n.split("/")[0] for n in prov["photos"]}
    assert not scenes & set(LIT_EFFL0_HELD_OUT)
    assert not {s for s in scenes if any(a in s for a in ("sacre_coeur", "charlottenburg", "warsaw", "street"))}
    assert model.meta["held_out_scenes"] == list(LIT_EFFL0_HELD_OUT)


@pytest.mark.slow
def test_lit_train_fine_tuned_from_lit_effl0_saves_its_rule(tmp_path):
    """`lit train` with init.checkpoint lit-effl0: every checkpoint it writes (resumable
    ones and the final model.pt) keeps lit-effl0's background test."""
    import numpy as np
    from PIL import Image

    from lit.train import Trainer
    from lit.train.config import config_from_dict

    rng = np.random.default_rng(0)
    for i in range(12):
        scene = tmp_path / "photos" / f"scene{i % 3}"
        scene.mkdir(parents=True, exist_ok=True)
        Image.fromarray((rng.random((48, 64, 3)) * 255).astype(np.uint8)).save(scene / f"{i:02d}.png")
    cfg = config_from_dict({
        "init": {"checkpoint": "lit-effl0"},
        "data": {"source": "folder", "root": str(tmp_path / "photos"), "image_size": 64, "queries_per_epoch": 5,
                 "pool_size": 9, "num_negatives": 1, "val_images": 3, "val_views": 1},
        "optim": {"epochs": 1, "lr": 1e-4}, "validate_every": 0, "seed": 0,
    })
    shipped = lit.load_model("lit-effl0").match_rule()
    trainer = Trainer(cfg, tmp_path / "out", device="cpu", log=lambda _: None)
    trainer.fit()
    for path in (tmp_path / "out" / "model.pt", tmp_path / "out" / "checkpoint_epoch0001.pt"):
        tuned = lit.load_model(path)
        rule = tuned.match_rule()
        assert (rule.threshold, rule.margin) == (shipped.threshold, shipped.margin) == (None, 0.1), path
        assert torch.equal(rule.background, shipped.background), path
    assert not torch.equal(tuned.lit.templates_init, lit.load_model("lit-effl0").lit.templates_init)  # it trained
