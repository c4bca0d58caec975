"""Dataset layouts, SfM database loading, the dataset registry and safe archive extraction."""

import dataclasses
import io
import os
import pickle
import shutil
import tarfile
import warnings

import numpy as np
import pytest

from lit._pickle import UnsafePickleError
from lit.data import (
    DATASETS,
    DatasetInfo,
    RemoteFile,
    RevisitedDataset,
    SfM120k,
    cid_to_path,
    download_dataset,
    extract_archive,
    list_datasets,
    load_sfm_db,
    r1m_image_list,
)
from lit.evaluate import classic_map, revisited_map

GND_DIR = os.path.join(os.path.dirname(__file__), "data", "revisited-gnd")


# --------------------------------------------------------------------------- revisited datasets
@pytest.fixture
def revisited_root(tmp_path):
    for name in ("roxford5k", "rparis6k"):
        (tmp_path / name / "jpg").mkdir(parents=True)
        shutil.copy(os.path.join(GND_DIR, f"gnd_{name}.pkl"), tmp_path / name)
    return tmp_path


@pytest.mark.parametrize("name,n_images", [("roxford5k", 4993), ("rparis6k", 6322)])
def test_revisited_dataset_lists_images_queries_and_boxes(revisited_root, name, n_images):
    ds = RevisitedDataset(name, revisited_root)
    assert len(ds) == ds.n_images == n_images and ds.n_queries == 70
    assert ds.images[0] == revisited_root / name / "jpg" / f"{ds.imlist[0]}.jpg"
    assert ds.queries[3] == revisited_root / name / "jpg" / f"{ds.qimlist[3]}.jpg"
    boxes = ds.bboxes
    assert boxes.shape == (70, 4) and np.all(boxes[:, 2] > boxes[:, 0]) and np.all(boxes[:, 3] > boxes[:, 1])
    assert ds.query_bbox(0) == tuple(float(v) for v in ds.gnd[0]["bbx"])
    # query images sit next to the database images but are not in imlist; none was copied
    assert len(ds.missing_images()) == len(set(ds.images) | set(ds.queries))
    ranks = np.tile(np.arange(n_images)[:, None], (1, 70))
    assert ds.evaluate(ranks)["medium"]["map"] == pytest.approx(revisited_map(ranks, ds.gnd)["medium"]["map"])
    assert name in repr(ds)


def test_revisited_dataset_missing_ground_truth_says_how_to_download(tmp_path):
    with pytest.raises(FileNotFoundError, match="download_dataset"):
        RevisitedDataset("roxford5k", tmp_path)


def test_revisited_dataset_refuses_a_malicious_ground_truth(tmp_path):
    marker = tmp_path / "pwned"
    (tmp_path / "roxford5k").mkdir()
    (tmp_path / "roxford5k" / "gnd_roxford5k.pkl").write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(UnsafePickleError):
        RevisitedDataset("roxford5k", tmp_path)
    assert not marker.exists()


def test_r1m_image_list_reads_the_list_file(tmp_path):
    base = tmp_path / "revisitop1m"
    base.mkdir()
    (base / "revisitop1m.txt").write_text("a/b/one.jpg\nc/two.jpg\n\n")
    assert r1m_image_list(tmp_path) == [base / "jpg" / "a/b/one.jpg", base / "jpg" / "c/two.jpg"]
    other = tmp_path / "other.txt"
    other.write_text("x.jpg\n")
    assert r1m_image_list(tmp_path, list_file=other) == [base / "jpg" / "x.jpg"]


def test_r1m_image_list_falls_back_to_scanning_with_a_warning(tmp_path):
    with pytest.raises(FileNotFoundError, match="revisitop1m"):
        r1m_image_list(tmp_path)
    jpg = tmp_path / "revisitop1m" / "jpg"
    (jpg / "b").mkdir(parents=True)
    for p in ("b/2.jpg", "1.jpg", "b/readme.txt"):
        (jpg / p).write_bytes(b"x")
    with pytest.warns(UserWarning, match="sorted order"):
        assert r1m_image_list(tmp_path) == [jpg / "1.jpg", jpg / "b" / "2.jpg"]


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
    db["train"]["cids"] = [_Payload(marker)] + CIDS[1:8]
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


class _Payload:
    """Pickles into a call that would create ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


# --------------------------------------------------------------------------- registry
def test_registry_holds_the_public_datasets():
    assert {"roxford5k", "rparis6k", "revisitop1m", "retrieval-sfm-120k", "retrieval-sfm-30k"} <= set(DATASETS)
    assert list_datasets() == sorted(DATASETS)
    for name, info in DATASETS.items():
        assert info.name == name and info.files
        for f in info.files:
            assert f.url.startswith(("http://", "https://"))
            assert f.sha256 is None or (len(f.sha256) == 64 and int(f.sha256, 16) >= 0)
            assert not os.path.isabs(f.path) and ".." not in f.path.split("/")
    assert len([f for f in DATASETS["revisitop1m"].files if f.extract_to]) == 100
    with pytest.raises(dataclasses.FrozenInstanceError):
        DATASETS["roxford5k"].name = "x"
    with pytest.raises(TypeError):
        DATASETS["new"] = DATASETS["roxford5k"]
    with pytest.raises(ValueError, match="unknown dataset"):
        download_dataset("imagenet", "/nonexistent")


# --------------------------------------------------------------------------- archives
def make_tar(path, members):
    """members: name -> bytes (file) or ("sym", target)."""
    with tarfile.open(path, "w:gz") as tar:
        for name, content in members.items():
            info = tarfile.TarInfo(name)
            if isinstance(content, tuple):
                info.type = tarfile.SYMTYPE
                info.linkname = content[1]
                tar.addfile(info)
            else:
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
    return path


@pytest.mark.parametrize("bad", ["../evil.txt", "a/../../evil.txt", "/tmp/lit-evil-abs.txt"])
def test_extraction_refuses_members_outside_the_target(tmp_path, bad):
    archive = make_tar(tmp_path / "bad.tgz", {"ok.txt": b"fine", bad: b"evil"})
    dst = tmp_path / "out" / "inner"
    with pytest.raises(ValueError, match="unsafe member"):
        extract_archive(archive, dst)
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "out" / "evil.txt").exists()
    assert not (dst / "ok.txt").exists()  # nothing is extracted from a refused archive


def test_extraction_refuses_links_pointing_outside(tmp_path):
    archive = make_tar(tmp_path / "link.tgz", {"a/link": ("sym", "../../outside")})
    with pytest.raises(ValueError, match="link"):
        extract_archive(archive, tmp_path / "out")


def test_extraction_flatten_and_hoist(tmp_path):
    archive = make_tar(tmp_path / "paris.tgz", {"paris/defense/p1.jpg": b"1", "paris/louvre/p2.jpg": b"2"})
    out = extract_archive(archive, tmp_path / "jpg", flatten=True)
    assert sorted(p.name for p in out) == ["p1.jpg", "p2.jpg"]
    assert (tmp_path / "jpg" / "p2.jpg").read_bytes() == b"2"
    archive = make_tar(tmp_path / "ims.tgz", {"ims/ab/cd/x": b"x", "ims/ef/y": b"y"})
    extract_archive(archive, tmp_path / "ims", hoist=True)
    assert (tmp_path / "ims" / "ab" / "cd" / "x").read_bytes() == b"x"
    assert not (tmp_path / "ims" / "ims").exists()


def test_download_dataset_from_file_urls(tmp_path):
    src = tmp_path / "remote"
    src.mkdir()
    gnd = src / "gnd_toy.pkl"
    shutil.copy(os.path.join(GND_DIR, "gnd_roxford5k.pkl"), gnd)
    archive = make_tar(src / "images.tgz", {"images/a.jpg": b"a", "images/b.jpg": b"b"})
    info = DatasetInfo(
        name="toy", directory="toy",
        files=(RemoteFile(gnd.as_uri(), "gnd_toy.pkl"),
               RemoteFile(archive.as_uri(), "images.tgz", extract_to="jpg", flatten=True)),
        links=(("images", "jpg"),),
    )
    root = tmp_path / "datasets"
    ds_dir = download_dataset(info, root, progress=False)
    assert ds_dir == root / "toy"
    assert (ds_dir / "jpg" / "a.jpg").read_bytes() == b"a"
    assert (ds_dir / "gnd_toy.pkl").read_bytes() == gnd.read_bytes()
    assert not (ds_dir / "images.tgz").exists() and (ds_dir / ".images.tgz.extracted").is_file()
    assert (ds_dir / "images" / "b.jpg").read_bytes() == b"b"
    ds = RevisitedDataset("toy", root)
    assert ds.n_queries == 70
    # a second call finds everything in place and fetches nothing
    shutil.rmtree(src)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert download_dataset(info, root, progress=False) == ds_dir
