"""Training and evaluation of the global baseline: a tiny run raises Recall@1, every loss
trains, a seed reproduces a run, ``train_dataset`` writes what ``lit train-global`` reports."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
import yaml
from metric.shapes import TINY

from lit.errors import UsageError
from lit.metric import (
    GlobalModel,
    ImageFolderClasses,
    MetricLoss,
    TrainConfig,
    build_loss,
    eval_transform,
    evaluate_global,
    train_dataset,
    train_global,
    train_transform,
)


def test_build_loss_gives_the_configured_pml_loss():
    from pytorch_metric_learning import losses, miners

    semihard = build_loss(TrainConfig(loss="triplet", mining="semihard", margin=0.2))
    assert isinstance(semihard, MetricLoss) and isinstance(semihard.loss, losses.TripletMarginLoss)
    assert semihard.loss.margin == 0.2 and semihard.miner.margin == 0.2
    assert semihard.miner.type_of_triplets == "semihard"
    assert isinstance(build_loss(TrainConfig(mining="batch_hard")).miner, miners.BatchHardMiner)
    assert build_loss(TrainConfig(mining="all")).miner is None
    contrastive = build_loss(TrainConfig(loss="contrastive"))
    assert isinstance(contrastive.loss, losses.ContrastiveLoss) and contrastive.loss.neg_margin == 0.5
    margin = build_loss(TrainConfig(loss="margin", margin=0.3, beta=1.0))
    assert isinstance(margin.loss, losses.MarginLoss) and isinstance(margin.miner, miners.DistanceWeightedMiner)
    assert margin.loss.margin == 0.3 and margin.beta.item() == 1.0 and margin.mine_in_float64
    with pytest.raises(UsageError):
        TrainConfig(loss="arcface")
    with pytest.raises(ValueError):
        TrainConfig(samples_per_class=1)


def test_training_raises_recall_at_1(shapes, one_thread):
    train_root, test_root = shapes
    torch.manual_seed(0)
    model = GlobalModel(TINY, dim=32, out_index=-2, image_size=48)
    train = ImageFolderClasses(train_root, train_transform(48, scale=(0.5, 1.0)))
    test = ImageFolderClasses(test_root, eval_transform(48, 48))
    before = evaluate_global(model, test, ks=(1,), device="cpu")[1]
    cfg = TrainConfig(classes_per_batch=8, samples_per_class=4, epochs=4, batches_per_epoch=25, lr=3e-3, seed=0)
    history = train_global(model, train, cfg, device="cpu")
    after = evaluate_global(model, test, ks=(1,), device="cpu")[1]
    assert [h["steps"] for h in history] == [25] * 4
    assert not model.training
    assert after >= before + 0.15 and after >= 0.4, (before, after)


@pytest.mark.parametrize("loss", ["contrastive", "margin", "batch_hard"])
def test_training_runs_with_each_loss(shapes, one_thread, loss):
    torch.manual_seed(0)
    model = GlobalModel(TINY, dim=16, out_index=-2, image_size=32)
    train = ImageFolderClasses(shapes[0], train_transform(32))
    kind = {"loss": "triplet", "mining": "batch_hard"} if loss == "batch_hard" else {"loss": loss}
    cfg = TrainConfig(classes_per_batch=4, samples_per_class=2, epochs=2, batches_per_epoch=2, seed=1, **kind)
    history = train_global(model, train, cfg, device="cpu")
    assert len(history) == 2 and all(np.isfinite(h["loss"]) for h in history)
    if loss == "margin":
        assert "beta" in history[0]


def test_training_is_reproducible_with_a_seed(shapes, one_thread):
    outs = []
    for _ in range(2):
        torch.manual_seed(0)
        model = GlobalModel(TINY, dim=8, out_index=-2, image_size=32)
        train = ImageFolderClasses(shapes[0], train_transform(32))
        cfg = TrainConfig(classes_per_batch=4, samples_per_class=2, epochs=1, batches_per_epoch=3, seed=5)
        outs.append(train_global(model, train, cfg, device="cpu")[0]["loss"])
    assert outs[0] == outs[1]


def test_training_logs_progress(shapes, one_thread, caplog):
    torch.manual_seed(0)
    model = GlobalModel(TINY, dim=8, out_index=-2, image_size=32)
    cfg = TrainConfig(classes_per_batch=4, samples_per_class=2, epochs=1, batches_per_epoch=2, seed=0)
    with caplog.at_level(logging.INFO, logger="lit.metric"):
        train_global(model, ImageFolderClasses(shapes[0], train_transform(32)), cfg, device="cpu", log_every=1)
    lines = [r.getMessage() for r in caplog.records if r.name == "lit.metric.train"]
    assert lines[0].startswith("epoch 1/1 step 1/2 loss ") and lines[-1].startswith("epoch 1/1: loss ")


def test_train_dataset_writes_checkpoint_and_report(shapes, tmp_path, one_thread):
    out = tmp_path / "run" / "model.pt"
    cfg = TrainConfig(classes_per_batch=4, samples_per_class=2, epochs=1, batches_per_epoch=2, seed=0)
    report = train_dataset(shapes[0], out, cfg, backbone=TINY, out_index=-2, dim=8, image_size=32,
                           evaluate=True, eval_root=shapes[1], device="cpu")
    assert report["checkpoint"] == str(out) and report["eval_images"] == 96
    saved = yaml.safe_load((tmp_path / "run" / "model.yaml").read_text())
    assert saved["history"] == report["history"] and saved["recall"] == report["recall"]
    assert set(saved["recall"]) == {"1", "10", "95"}  # 96 test images: k clipped to 95
    assert GlobalModel.load(out).cfg.dim == 8
    with pytest.raises(UsageError, match="eval_root"):
        train_dataset(shapes[0], out, cfg, backbone=TINY, dim=8, image_size=32, evaluate=True, device="cpu")
