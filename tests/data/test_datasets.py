"""lit.data.datasets: the dataset registry, safe archive extraction and dataset downloads."""

import dataclasses
import io
import os
import shutil
import tarfile
import warnings

import pytest
from paths import GND_DIR

from lit.data import (
    DATASETS,
    DatasetInfo,
    RemoteFile,
    RevisitedDataset,
    download_dataset,
    extract_archive,
    list_datasets,
)


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
