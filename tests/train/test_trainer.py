"""lit.train.trainer: training lowers the loss, resumes after kill -9, matches over two gloo processes, and freezes what it is told."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
from paths import REPO
from training import make_photos, tiny_config_dict

import lit
from lit.models import (
    BackboneConfig,
    LITConfig,
    ModelConfig,
    RuntimeConfig,
    SuperFeatureModel,
)
from lit.train import (
    Trainer,
    config_from_dict,
    load_config,
    save_config,
)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def subprocess_env():
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def state_of(path):
    from lit.models.checkpoint import safe_load

    return safe_load(path)["state_dict"]


def max_param_diff(a, b):
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].is_floating_point())


# ---------------------------------------------------------------------- trainer
def test_short_run_lowers_the_loss_and_raises_validation_map(tmp_path):
    make_photos(tmp_path / "photos", n=50)
    cfg = config_from_dict(tiny_config_dict(
        tmp_path / "photos",
        init={"whitening_images": 40, "shrinkage": 0.5},
        data={"image_size": 64, "queries_per_epoch": 20, "pool_size": 40, "val_images": 10, "val_views": 4},
        optim={"epochs": 4, "lr": 3e-4},
        validate_every=1,
        seed=0,
    ))
    trainer = Trainer(cfg, tmp_path / "out", device="cpu", log=lambda _: None)
    reduction = trainer.model.dim_reduction.weight.detach().clone()
    bn = trainer.model.backbone.net.bn1.running_mean.clone()
    history = trainer.fit()
    # (with this seed: mAP 0.46 -> 0.71; over 6 seeds the final mAP rose by 0.01 to 0.25)
    assert [r["epoch"] for r in history] == [0, 1, 2, 3, 4]
    assert history[-1]["loss"] < history[1]["loss"]
    assert history[-1]["val_map"] > history[0]["val_map"] + 0.1, history
    # frozen parts stay frozen
    assert torch.equal(trainer.model.dim_reduction.weight, reduction)
    assert torch.equal(trainer.model.backbone.net.bn1.running_mean, bn)
    out = tmp_path / "out"
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert lines == history
    assert (out / "metrics.png").stat().st_size > 1000
    assert load_config(out / "config.yaml") == cfg
    # the checkpoints are plain lit checkpoints too

    model = lit.load_model(str(out / "checkpoint_epoch0004.pt"))
    sd = trainer.model.state_dict()
    assert all(torch.equal(v, sd[k].cpu()) for k, v in model.state_dict().items())
    assert sorted(p.name for p in out.glob("checkpoint_epoch*.pt")) == ["checkpoint_epoch0003.pt", "checkpoint_epoch0004.pt"]


def test_kill_9_and_resume_gives_the_parameters_of_an_uninterrupted_run(tmp_path):
    make_photos(tmp_path / "photos", n=24)
    d = tiny_config_dict(tmp_path / "photos", optim={"epochs": 2}, validate_every=1)
    cfg = config_from_dict(d)
    save_config(cfg, tmp_path / "cfg.yaml")
    reference = Trainer(cfg, tmp_path / "ref", device="cpu", log=lambda _: None)
    reference.fit()

    out = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "lit.train", "--config", str(tmp_path / "cfg.yaml"), "--out", str(out),
         "--device", "cpu", "--set", "optim.epochs=50"],
        env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.time() + 90
        while not (out / "checkpoint_epoch0001.pt").exists():
            assert proc.poll() is None, proc.stdout.read().decode()
            assert time.time() < deadline, "no checkpoint after 90 s"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    resumed = Trainer(cfg, out, device="cpu", resume=True, log=lambda _: None)
    assert resumed.epoch in (1, 2)
    history = resumed.fit()
    assert [r["epoch"] for r in history] == [0, 1, 2]
    assert history[-1]["loss"] == pytest.approx(reference.history[-1]["loss"], rel=1e-6)
    diff = max_param_diff(resumed.model.state_dict(), reference.model.state_dict())
    assert diff <= 1e-6, diff
    assert resumed.optimizer.param_groups[0]["lr"] == pytest.approx(reference.optimizer.param_groups[0]["lr"])


def test_resume_refuses_a_different_configuration(tmp_path):
    make_photos(tmp_path / "photos", n=16)
    cfg = config_from_dict(tiny_config_dict(tmp_path / "photos", data={"queries_per_epoch": 5, "num_negatives": 1, "num_workers": 1}))
    Trainer(cfg, tmp_path / "out", device="cpu", log=lambda _: None).fit()
    with pytest.raises(ValueError, match="optim.lr"):
        Trainer(cfg.replace(**{"optim.lr": 1e-3}), tmp_path / "out", device="cpu", resume=True, log=lambda _: None)


def test_two_process_gloo_run_gives_the_single_process_parameters(tmp_path):
    make_photos(tmp_path / "photos", n=24)
    # the data-driven LIT initialisation gathers local features from both processes; a soft
    # one, since a saturated softmax leaves gradients of rounding-noise size that Adam's first
    # step scales up to the learning rate, differently on each process
    d = tiny_config_dict(tmp_path / "photos", data={"queries_per_epoch": 10}, optim={"epochs": 1, "lr": 1e-3},
                         init={"lit": "kmeans", "lit_sharpness": 1.0})
    cfg = config_from_dict(d)
    save_config(cfg, tmp_path / "cfg.yaml")
    port = free_port()
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(port),
        "-m", "lit.train", "--config", str(tmp_path / "cfg.yaml"), "--out", str(tmp_path / "ddp"), "--device", "cpu",
    ]
    run = subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    single = Trainer(cfg, tmp_path / "single", device="cpu", log=lambda _: None)
    before = {k: v.clone() for k, v in single.model.state_dict().items()}
    single.fit()
    ddp_state = state_of(tmp_path / "ddp" / "model.pt")
    assert max_param_diff(single.model.state_dict(), before) > 1e-4  # it did train
    diff = max_param_diff(ddp_state, single.model.state_dict())
    assert diff < 1e-5, diff
    ddp_metrics = [json.loads(x) for x in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    assert ddp_metrics[-1]["tuples"] == 10
    assert ddp_metrics[-1]["loss"] == pytest.approx(single.history[-1]["loss"], rel=1e-4)


def test_frozen_backbone_trains_lit_only(tmp_path):
    make_photos(tmp_path / "photos", n=16)
    cfg = config_from_dict(tiny_config_dict(tmp_path / "photos", data={"queries_per_epoch": 5, "num_negatives": 1},
                                            optim={"epochs": 1, "lr": 1e-3, "freeze_backbone": True}))
    trainer = Trainer(cfg, tmp_path / "out", device="cpu", log=lambda _: None)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.fit()
    after = trainer.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("backbone."))
    assert not torch.equal(before["lit.templates_init"], after["lit.templates_init"])


@pytest.mark.parametrize("background", [0.0, 1.5])
def test_kmeans_lit_init_starts_from_the_training_images_local_features(tmp_path, background):
    from lit.models import init_lit_from_tokens
    from lit.train.trainer import backbone_tokens

    make_photos(tmp_path / "photos", n=16)
    logs = []
    cfg = config_from_dict(tiny_config_dict(tmp_path / "photos", optim={"epochs": 0},
                                            init={"lit": "kmeans", "lit_sharpness": 10.0,
                                                  "lit_background": background, "lit_background_fraction": 0.4}))
    trainer = Trainer(cfg, tmp_path / "out", device="cpu", log=logs.append)
    assert any(line.startswith("LIT initialised from 72 local features of 8 images") for line in logs)
    # the same initialisation, recomputed from the tokens of the same images
    ref = SuperFeatureModel(cfg.model)
    idx = trainer._whitening_indices()
    tokens = backbone_tokens(trainer.model, trainer.dataset.load, idx)
    assert tokens.shape == (72, trainer.model.backbone.out_channels)
    direct = trainer.model.backbone(trainer.model.normalize(trainer.dataset.load(idx[0]).unsqueeze(0)))
    torch.testing.assert_close(tokens[:9], direct[0].flatten(1).T)
    from lit.train.tuples import _seed

    init_lit_from_tokens(ref.lit, tokens, sharpness=10.0, seed=_seed(0, 6), background=background,
                         background_fraction=0.4)
    for key in ("project_k.weight", "project_v.weight", "templates_init", "project_q.weight", "mlp.2.weight", "mlp.2.bias"):
        torch.testing.assert_close(trainer.model.lit.state_dict()[key], ref.lit.state_dict()[key])
    if background:  # and it is not the plain k-means one
        init_lit_from_tokens(ref.lit, tokens, sharpness=10.0, seed=_seed(0, 6))
        assert not torch.allclose(trainer.model.lit.project_q.weight, ref.lit.project_q.weight)
    with pytest.raises(ValueError, match="init.lit.*'random', 'kmeans', got 'kmean'"):
        config_from_dict(tiny_config_dict(tmp_path / "photos", init={"lit": "kmean"}))
    with pytest.raises(ValueError, match="init.lit_background must be >= 0"):
        config_from_dict(tiny_config_dict(tmp_path / "photos", init={"lit": "kmeans", "lit_background": -1}))
    with pytest.raises(ValueError, match=r"init.lit_background_fraction must be in \(0, 1\)"):
        config_from_dict(tiny_config_dict(tmp_path / "photos", init={"lit_background_fraction": 0}))


def test_partly_trained_backbone_has_its_own_learning_rate(tmp_path):
    make_photos(tmp_path / "photos", n=16)
    cfg = config_from_dict(tiny_config_dict(
        tmp_path / "photos", data={"queries_per_epoch": 5, "num_negatives": 1},
        optim={"epochs": 1, "lr": 1e-3, "backbone_lr": 1e-4, "backbone_trainable_from": "net.layer3"}))
    trainer = Trainer(cfg, tmp_path / "out", device="cpu", log=lambda _: None)
    lit_group, backbone_group = trainer.optimizer.param_groups
    assert (lit_group["lr"], backbone_group["lr"]) == (1e-3, 1e-4)
    layer3 = {id(p) for p in trainer.model.backbone.net.layer3.parameters()}
    assert {id(p) for p in backbone_group["params"]} == layer3
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.fit()
    after = trainer.model.state_dict()
    changed = {k for k in before if before[k].is_floating_point() and not torch.equal(before[k], after[k])}
    backbone_changed = {k.split(".")[2] for k in changed if k.startswith("backbone.")}
    assert backbone_changed == {"layer3"}  # earlier layers frozen, batch-norm statistics too
    assert "lit.templates_init" in changed


def test_frozen_parameters_stay_as_initialised(tmp_path):
    make_photos(tmp_path / "photos", n=16)
    cfg = config_from_dict(tiny_config_dict(
        tmp_path / "photos", data={"queries_per_epoch": 5, "num_negatives": 1},
        optim={"epochs": 1, "lr": 1e-3, "freeze_backbone": True, "frozen": ["lit.project_k", "lit.project_q"]}))
    trainer = Trainer(cfg, tmp_path / "out", device="cpu", log=lambda _: None)
    trained = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    names = {name for name, p in trainer.model.named_parameters() if id(p) in trained}
    assert names and all(n.startswith("lit.") and not n.startswith(("lit.project_k", "lit.project_q")) for n in names)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.fit()
    after = trainer.model.state_dict()
    changed = {k for k in before if before[k].is_floating_point() and not torch.equal(before[k], after[k])}
    assert "lit.templates_init" in changed and "lit.project_v.weight" in changed
    assert not changed & {"lit.project_k.weight", "lit.project_q.weight"}


def test_frozen_prefixes_are_checked(tmp_path):
    make_photos(tmp_path / "photos", n=16)
    with pytest.raises(ValueError, match=r"no parameter starts with 'lit.project_z' \(besides the backbone's: lit\."):
        Trainer(config_from_dict(tiny_config_dict(tmp_path / "photos", optim={"frozen": ["lit.project_z"]})),
                tmp_path / "a", device="cpu", log=lambda _: None)
    with pytest.raises(ValueError, match="nothing left to train"):
        Trainer(config_from_dict(tiny_config_dict(tmp_path / "photos", optim={"frozen": ["lit", "backbone"]})),
                tmp_path / "b", device="cpu", log=lambda _: None)
    with pytest.raises(ValueError, match="empty name prefix"):
        config_from_dict(tiny_config_dict(tmp_path / "photos", optim={"frozen": [""]}))


def test_backbone_trainable_from_names_the_modules_when_wrong(tmp_path):
    from lit.models.backbone import freeze_backbone_before

    net = SuperFeatureModel(ModelConfig(BackboneConfig("resnet18", 3), LITConfig(2, 8, 32), None, RuntimeConfig()))
    with pytest.raises(ValueError, match=r"'net\.layer9'.*net\.layer3"):
        freeze_backbone_before(net.backbone, "net.layer9")
    frozen = freeze_backbone_before(net.backbone, "net.layer2")
    flags = [(n, p.requires_grad) for n, p in net.backbone.named_parameters()]
    assert frozen == sum(not n.startswith(("net.layer2", "net.layer3")) for n, _ in flags)
    assert all(g == n.startswith(("net.layer2", "net.layer3")) for n, g in flags)
    with pytest.raises(ValueError, match="exclude each other"):
        config_from_dict({"optim": {"freeze_backbone": True, "backbone_trainable_from": "net.layer3"}})
    with pytest.raises(ValueError, match="backbone_lr"):
        config_from_dict({"optim": {"backbone_lr": 0}})


def test_metrics_plot_axes_for_one_epoch(tmp_path):
    from lit.train import plot_metrics

    fig = plot_metrics([{"epoch": 0, "val_map": 1.0}, {"epoch": 1, "loss": 0.02, "attention_loss": 0.05,
                                                       "superfeature_loss": 0.4, "val_map": 1.0}], tmp_path / "m.png")
    ax_loss, ax_map = fig.axes
    assert ax_map.get_ylim() == (0.0, 100.0)
    assert ax_map.get_xlim() == (-0.5, 1.5) and all(float(t).is_integer() for t in ax_map.get_xticks())
    assert ax_loss.get_ylim()[0] == 0.0 and ax_loss.get_ylim()[1] > 0.02
