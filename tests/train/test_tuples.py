"""lit.train.tuples: hard-negative mining against a naive loop, SfM and folder tuples, scene positives."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from PIL import Image
from training import make_photos

from lit.models import BackboneConfig, LITConfig, ModelConfig, RuntimeConfig, SuperFeatureModel
from lit.train import (
    ImageDatabase,
    TupleDataset,
    mine_hard_negatives,
)
from lit.train.config import DataConfig


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
