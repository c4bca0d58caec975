"""lit.data.sfm120k: SfM-120k image paths, database loading, validation ground truth and refused databases."""

import dataclasses
import pickle

import numpy as np
import pytest
from pickle_payloads import SystemPayload

from lit._pickle import UnsafePickleError
from lit.data import (
    SfM120k,
    cid_to_path,
    load_sfm_db,
)
from lit.evaluate import classic_map, revisited_map

# --------------------------------------------------------------------------- SfM-120k
CIDS = [f"{i:08x}deadbeef{i * 7919:06x}" for i in range(12)]


def tiny_sfm_db(as_numpy=False):
    arr = np.asarray if as_numpy else list
    return {
        "train": {"cids": CIDS[:8], "cluster": arr([0, 0, 0, 1, 1, 2, 2, 2]),
                  "qidxs": arr([0, 3, 5]), "pidxs": arr([1, 4, 7]), "bbxs": [None] * 8},
        "val": {"cids": CIDS[8:], "cluster": arr([5, 5, 6, 5]),
                "qidxs": arr([0, 2, 0]), "pidxs": arr([1, 2, 3])},
    }


def write_sfm(root, db, name="retrieval-SfM-120k", protocol=2):
    (root / name).mkdir(parents=True, exist_ok=True)
    path = root / name / f"{name}.pkl"
    path.write_bytes(pickle.dumps(db, protocol=protocol))
    return path


def test_cid_to_path_uses_three_levels_from_the_end_of_the_id():
    assert cid_to_path("abcdef123456", "/ims") == cid_to_path("abcdef123456", "/ims")
    p = cid_to_path("abcdef123456", "/ims")
    assert p.parts[-4:] == ("56", "34", "12", "abcdef123456")
    with pytest.raises(ValueError):
        cid_to_path("abc", "/ims")


@pytest.mark.parametrize("as_numpy,protocol", [(False, 2), (True, 2), (True, 4)])
def test_tiny_sfm_database_loads(tmp_path, as_numpy, protocol):
    write_sfm(tmp_path, tiny_sfm_db(as_numpy), protocol=protocol)
    db = SfM120k(tmp_path)
    train, val = db.train, db.val
    assert len(train) == 8 and len(val) == 4
    assert train.cids[0] == CIDS[0]
    np.testing.assert_array_equal(train.qidxs, [0, 3, 5])
    np.testing.assert_array_equal(train.pidxs, [1, 4, 7])
    np.testing.assert_array_equal(val.cluster, [5, 5, 6, 5])
    c = CIDS[2]
    assert train.images[2] == tmp_path / "retrieval-SfM-120k" / "ims" / c[-2:] / c[-4:-2] / c[-6:-4] / c
    assert db.db["train"]["bbxs"] == [None] * 8
    with pytest.raises(ValueError, match="split"):
        db.split("test")
    with pytest.raises(dataclasses.FrozenInstanceError):
        train.name = "x"


def test_sfm_validation_ground_truth_in_revisited_form(tmp_path):
    write_sfm(tmp_path, tiny_sfm_db())
    db = SfM120k(tmp_path)
    cfg = db.val_ground_truth()
    assert cfg["imlist"] == CIDS[8:] and cfg["qidxs"] == [0, 2]
    assert cfg["qimlist"] == [CIDS[8], CIDS[10]]
    # query 0 has two pairs (positives 1 and 3); query 2 is paired with itself -> no positive
    assert cfg["gnd"][0]["ok"] == [1, 3] and cfg["gnd"][0]["junk"] == [0]
    assert cfg["gnd"][1]["ok"] == [] and cfg["gnd"][1]["junk"] == [2]
    ranks = np.array([[0, 2], [1, 0], [3, 1], [2, 3]])  # query 0: itself, then its positives
    res = classic_map(ranks, cfg["gnd"])
    assert res["map"] == pytest.approx(1.0) and np.isnan(res["aps"][1])
    assert revisited_map(ranks, cfg["gnd"])["medium"]["map"] == pytest.approx(1.0)
    by_cluster = db.val_ground_truth(positives="cluster")
    assert by_cluster["gnd"][0]["ok"] == [1, 3]
    with pytest.raises(ValueError):
        db.val_ground_truth(positives="nope")


def test_sfm30k_uses_the_120k_images_when_it_has_none(tmp_path):
    (tmp_path / "retrieval-SfM-120k" / "ims").mkdir(parents=True)
    write_sfm(tmp_path, tiny_sfm_db(), name="retrieval-SfM-30k")
    db = SfM120k(tmp_path, name="retrieval-SfM-30k")
    assert db.ims_root == tmp_path / "retrieval-SfM-120k" / "ims"


def test_sfm_loader_refuses_a_malicious_database(tmp_path):
    marker = tmp_path / "pwned"
    db = tiny_sfm_db()
    db["train"]["cids"] = [SystemPayload(marker)] + CIDS[1:8]
    write_sfm(tmp_path, db)
    with pytest.raises(UnsafePickleError, match=r"retrieval-SfM-120k\.pkl"):
        SfM120k(tmp_path)
    assert not marker.exists()


def test_sfm_loader_reports_malformed_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="download_dataset"):
        SfM120k(tmp_path)
    db = tiny_sfm_db()
    del db["val"]["pidxs"]
    path = write_sfm(tmp_path, db)
    with pytest.raises(ValueError, match="'val'.*pidxs"):
        load_sfm_db(path)
    db = tiny_sfm_db()
    db["train"]["qidxs"] = [0, 3, 99]
    write_sfm(tmp_path, db)
    with pytest.raises(ValueError, match="qidxs"):
        SfM120k(tmp_path)
