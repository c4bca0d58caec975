"""Training: tuples and hard-negative mining, synthetic views, trainer, resume, DDP, config."""

from __future__ import annotations

import json
import os
import pickle
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from lit.models import BackboneConfig, LITConfig, ModelConfig, RuntimeConfig, SuperFeatureModel
from lit.train import (
    ImageDatabase,
    Trainer,
    TupleDataset,
    ViewConfig,
    average_precision,
    config_from_dict,
    config_to_dict,
    load_config,
    mine_hard_negatives,
    sample_homography,
    save_config,
    synthetic_view,
)
from lit.train.config import DataConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: deterministic, and much faster on a busy 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_photos(folder, n=50, size=(64, 51), seed=0, scenes=0):
    """``n`` synthetic photos: a smooth random background with random ellipses and boxes."""
    rng = np.random.default_rng(seed)
    paths = []
    w, h = size
    for i in range(n):
        low = rng.random((4, 5, 3))
        img = Image.fromarray((low * 255).astype(np.uint8)).resize((w, h), Image.BICUBIC)
        draw = ImageDraw.Draw(img)
        for _ in range(rng.integers(3, 7)):
            x0, y0 = rng.integers(0, w - 10), rng.integers(0, h - 10)
            x1, y1 = x0 + rng.integers(8, w // 2), y0 + rng.integers(8, h // 2)
            colour = tuple(int(c) for c in rng.integers(0, 256, 3))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x0, y0, x1, y1], fill=colour)
        sub = os.path.join(folder, f"scene{i % scenes:02d}") if scenes else folder
        os.makedirs(sub, exist_ok=True)
        path = os.path.join(sub, f"photo{i:03d}.png")
        img.save(path)
        paths.append(path)
    return paths


def tiny_config_dict(root, **sections):
    d = {
        "model": {
            "backbone": {"name": "resnet18", "out_index": 3},
            "lit": {"T": 2, "N": 8, "dim": 32},
            "reduction_dim": 16,
            "runtime": {"image_size": 64},
        },
        "init": {"whitening_images": 8},
        "data": {
            "source": "folder", "root": str(root), "image_size": 48, "queries_per_epoch": 10,
            "pool_size": 30, "num_negatives": 2, "val_images": 6, "val_views": 1,
        },
        "optim": {"epochs": 1, "lr": 3e-4},
        "validate_every": 0,
        "seed": 0,
    }
    for key, value in sections.items():
        d.setdefault(key, {})
        if isinstance(value, dict):
            d[key].update(value)
        else:
            d[key] = value
    return d


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def subprocess_env():
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    return env


def state_of(path):
    from lit.models.checkpoint import safe_load

    return safe_load(path)["state_dict"]


def max_param_diff(a, b):
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].is_floating_point())


# ---------------------------------------------------------------------- mining
def naive_hard_negatives(q, p, qc, pc, k):
    out = []
    for i in range(len(q)):
        sims = [float(q[i] @ p[j]) for j in range(len(p))]
        order = sorted(range(len(p)), key=lambda j: -sims[j])
        taken, clusters = [], set()
        for j in order:
            if pc[j] == qc[i] or pc[j] in clusters:
                continue
            taken.append(j)
            clusters.add(pc[j])
            if len(taken) == k:
                break
        out.append(taken)
    return out


@pytest.mark.parametrize("k", [1, 5, 20])
def test_hard_negative_mining_matches_naive_loop(k):
    g = torch.Generator().manual_seed(k)
    q = torch.nn.functional.normalize(torch.randn(9, 8, generator=g), dim=1)
    p = torch.nn.functional.normalize(torch.randn(60, 8, generator=g), dim=1)
    qc = torch.randint(0, 12, (9,), generator=g).tolist()
    pc = torch.randint(0, 12, (60,), generator=g).tolist()
    got = mine_hard_negatives(q, p, qc, pc, k, chunk=4)
    assert got == naive_hard_negatives(q, p, qc, pc, k)
    for i, row in enumerate(got):
        assert len(row) == min(k, len(set(pc) - {qc[i]}))


def test_hard_negative_mining_keeps_one_image_per_cluster_and_skips_query_cluster():
    # pool: images 0, 1 in cluster 7 (the query's), 2, 3 in cluster 1, 4 in cluster 2
    q = torch.tensor([[1.0, 0.0]])
    p = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [1.0, 0.01], [1.0, 0.1], [1.0, 0.2], [1.0, 0.5]]), dim=1)
    assert mine_hard_negatives(q, p, [7], [7, 7, 1, 1, 2], 5) == [[2, 4]]


# ---------------------------------------------------------------------- views
def test_synthetic_view_is_a_valid_seeded_image_with_a_real_homography():
    img = torch.rand(3, 40, 56, generator=torch.Generator().manual_seed(0))
    v1 = synthetic_view(img, generator=torch.Generator().manual_seed(3))
    v2 = synthetic_view(img, generator=torch.Generator().manual_seed(3))
    v3 = synthetic_view(img, generator=torch.Generator().manual_seed(4))
    assert v1.image.shape == img.shape and v1.image.dtype == img.dtype
    assert torch.isfinite(v1.image).all() and v1.image.min() >= 0 and v1.image.max() <= 1
    assert torch.equal(v1.image, v2.image) and torch.equal(v1.homography, v2.homography)
    assert not torch.allclose(v1.image, v3.image)
    assert float((v1.homography - torch.eye(3, dtype=torch.float64)).abs().max()) > 1e-2
    batch = synthetic_view(img.expand(2, -1, -1, -1).clone(), generator=torch.Generator().manual_seed(3))
    assert batch.image.shape == (2, 3, 40, 56) and batch.homography.shape == (2, 3, 3)


def test_synthetic_view_homography_maps_image_points_onto_the_view():
    cfg = ViewConfig(brightness=0, contrast=0, saturation=0, hue=0, blur_probability=0)
    for seed in range(4):
        h = sample_homography(60, 80, cfg, torch.Generator().manual_seed(seed))
        # pick an image point that lands well inside the view
        for x, y in [(40, 30), (30, 25), (50, 35), (20, 20), (60, 40)]:
            p = h @ torch.tensor([x, y, 1.0], dtype=torch.float64)
            vx, vy = float(p[0] / p[2]), float(p[1] / p[2])
            if 3 < vx < 76 and 3 < vy < 56:
                break
        img = torch.zeros(3, 60, 80)
        img[:, y - 1:y + 2, x - 1:x + 2] = 1.0
        view = synthetic_view(img, cfg, torch.Generator().manual_seed(seed))
        assert torch.allclose(view.homography, h)
        m = view.image[0]
        yy, xx = torch.meshgrid(torch.arange(60.0), torch.arange(80.0), indexing="ij")
        cx, cy = float((m * xx).sum() / m.sum()), float((m * yy).sum() / m.sum())
        assert abs(cx - vx) < 1.0 and abs(cy - vy) < 1.0


def test_view_config_rejects_bad_ranges():
    with pytest.raises(ValueError, match="scale"):
        ViewConfig(scale=(0.5, 1.5))
    with pytest.raises(ValueError, match="night_probability"):
        ViewConfig(night_probability=2.0)
    with pytest.raises(ValueError, match="night_gamma"):
        ViewConfig(night_gamma=(2.0, 1.0))


def test_night_views_darken_by_their_gamma_and_leave_old_views_unchanged():
    img = torch.rand(3, 40, 56, generator=torch.Generator().manual_seed(0))
    still = dict(rotation=0, perspective=0, scale=(1.0, 1.0), brightness=0, contrast=0, saturation=0, hue=0,
                 blur_probability=0)
    day = synthetic_view(img, ViewConfig(**still), torch.Generator().manual_seed(1)).image
    night_cfg = ViewConfig(**still, night_probability=1.0, night_gamma=(2.0, 2.0), night_cast=0.0, night_noise=0.0)
    night = synthetic_view(img, night_cfg, torch.Generator().manual_seed(1)).image
    assert torch.allclose(night, day.pow(2.0), atol=1e-6)  # identity geometry: exactly the gamma curve
    cast = ViewConfig(**still, night_probability=1.0, night_gamma=(1.0, 1.0), night_cast=0.3, night_noise=0.0)
    tinted = synthetic_view(img, cast, torch.Generator().manual_seed(1)).image
    gains = (tinted / day.clamp_min(1e-3))[:, day.amax(0) < 0.7].median(dim=1).values
    assert ((gains > 0.69) & (gains < 1.31)).all() and gains.std() > 1e-3  # one gain per channel
    # night_probability = 0 draws nothing more: the default views are those of before
    base = ViewConfig()
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(synthetic_view(img, base, g1).image, synthetic_view(img, ViewConfig(night_gamma=(1.1, 1.2)), g2).image)
    assert torch.equal(g1.get_state(), g2.get_state())


# ---------------------------------------------------------------------- tuples
@pytest.fixture(scope="module")
def tiny_model_cfg():
    return ModelConfig(
        backbone=BackboneConfig("resnet18", 3), lit=LITConfig(T=2, N=8, dim=32), reduction_dim=16,
        runtime=RuntimeConfig(image_size=64),
    )


def write_cirtorch_db(tmp_path, n=24, clusters=6):
    """A cirtorch-style database: images under ims/ab/cd/ef/<cid>, a pickle with splits."""
    ims = tmp_path / "ims"
    rng = np.random.default_rng(0)
    cids, cluster = [], []
    for i in range(n):
        cid = f"{rng.integers(1 << 40):x}{i:06d}"
        path = ims / cid[-2:] / cid[-4:-2] / cid[-6:-4] / cid
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (40 + i, 70, 3), dtype=np.uint8)).save(path, format="PNG")
        cids.append(cid)
        cluster.append(i % clusters)
    qidxs = list(range(0, n, 2))
    pidxs = [q + clusters if q + clusters < n else q - clusters for q in qidxs]
    db = {"train": {"cids": cids, "cluster": cluster, "qidxs": qidxs, "pidxs": pidxs}}
    with open(tmp_path / "db.pkl", "wb") as f:
        pickle.dump(db, f, protocol=2)
    return tmp_path / "db.pkl", ims


def test_sfm_tuples_follow_the_mining_rule_and_are_reproducible(tmp_path, tiny_model_cfg):
    db_file, ims = write_cirtorch_db(tmp_path)
    db = ImageDatabase.from_cirtorch(db_file, ims)
    assert len(db) == 24 and db.pairs[0] == (0, 6)
    cfg = DataConfig(root=str(ims), image_size=48, queries_per_epoch=5, pool_size=20, num_negatives=3)
    ds = TupleDataset(db, cfg, seed=1)
    torch.manual_seed(0)
    model = SuperFeatureModel(tiny_model_cfg)
    specs = ds.mine(model, epoch=0)
    assert len(ds) == 5
    _, pool = ds.sample(0)
    for spec in specs:
        assert (spec.query, spec.positive) in db.pairs and not spec.synthetic
        clusters = [db.clusters[n] for n in spec.negatives]
        assert len(spec.negatives) == 3 and len(set(clusters)) == 3
        assert db.clusters[spec.query] not in clusters and set(spec.negatives) <= set(pool)
    tup = ds[2]
    assert len(tup.images) == 5 and all(im.shape[0] == 3 and max(im.shape[1:]) <= 48 for im in tup.images)
    again = ds[2]
    assert all(torch.equal(a, b) for a, b in zip(tup.images, again.images, strict=True))
    # another epoch draws other queries
    assert [s.query for s in ds.mine(model, epoch=1)] != [s.query for s in specs]


def test_folder_tuples_use_synthetic_positives_and_other_scenes(tmp_path, tiny_model_cfg):
    make_photos(tmp_path / "photos", n=12, scenes=4)
    db = ImageDatabase.from_folder(tmp_path / "photos")
    assert sorted(set(db.clusters)) == [0, 1, 2, 3] and db.synthetic_positives
    ds = TupleDataset(db, DataConfig(source="folder", root="x", image_size=48, queries_per_epoch=4, num_negatives=2), seed=0)
    torch.manual_seed(0)
    ds.mine(SuperFeatureModel(tiny_model_cfg), epoch=0)
    for i, spec in enumerate(ds.specs):
        assert spec.synthetic and spec.positive == spec.query
        assert len({db.clusters[n] for n in spec.negatives} | {db.clusters[spec.query]}) == 3
        tup = ds[i]
        assert tup.query.shape == tup.positive.shape
        assert not torch.allclose(tup.query, tup.positive) and not torch.allclose(tup.query.flip(-1), tup.positive)


def test_average_precision_matches_hand_computed_values():
    assert average_precision([3, 1, 2], [3]) == 1.0
    # positives at ranks 1 and 3: ((0 + 1/2)/2 + (1/3 + 2/4)/2) / 2
    assert average_precision([0, 5, 1, 6], [5, 6]) == pytest.approx(((0 + 0.5) / 2 + (1 / 3 + 0.5) / 2) / 2)
    assert average_precision([0, 5, 1, 6], [5, 6], junk=[0, 1]) == 1.0


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
    import lit

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


def test_scene_positives_are_other_photos_of_the_scene(tmp_path, tiny_model_cfg):
    make_photos(tmp_path / "photos", n=12, scenes=4)
    db = ImageDatabase.from_folder(tmp_path / "photos")
    cfg = DataConfig(source="folder", root="x", image_size=48, queries_per_epoch=12, num_negatives=1, scene_positives=1.0)
    ds = TupleDataset(db, cfg, seed=0)
    torch.manual_seed(0)
    ds.mine(SuperFeatureModel(tiny_model_cfg), epoch=0)
    for i, spec in enumerate(ds.specs):
        assert not spec.synthetic and spec.positive != spec.query
        assert db.clusters[spec.positive] == db.clusters[spec.query]
        tup = ds[i]
        loaded = ds.load(spec.positive)
        assert torch.equal(tup.positive, loaded) or torch.equal(tup.positive, loaded.flip(-1))
    half = TupleDataset(db, cfg.__class__(**{**cfg.__dict__, "scene_positives": 0.5}), seed=0)
    half.mine(SuperFeatureModel(tiny_model_cfg), epoch=0)
    kinds = {spec.synthetic for spec in half.specs}
    assert kinds == {True, False}
    with pytest.raises(ValueError, match="scene_positives"):
        DataConfig(scene_positives=1.5)


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


def test_numbers_without_a_dot_are_numbers(tmp_path):
    (tmp_path / "c.yaml").write_text("optim:\n  lr: 3e-5\n  backbone_lr: 1E-6\n")
    cfg = load_config(tmp_path / "c.yaml", overrides=["optim.weight_decay=5e-4"])
    assert (cfg.optim.lr, cfg.optim.backbone_lr, cfg.optim.weight_decay) == (3e-5, 1e-6, 5e-4)
    with pytest.raises(ValueError, match=r"optim\.lr.*'3e-5x'"):
        load_config(tmp_path / "c.yaml", overrides=["optim.lr=3e-5x"])
