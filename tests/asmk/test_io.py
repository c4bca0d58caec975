"""The ASMK part of an index file: round trips through files and open HDF5 groups, files
of format version 1 written before the split, and one IndexFileError per damaged file."""

from __future__ import annotations

import os

import h5py
import numpy as np
import pytest
import torch

import lit.asmk.io as asmk_io
from lit.asmk import ASMK, FORMAT_VERSION
from lit.errors import IndexFileError

DATA = os.path.join(os.path.dirname(__file__), "data")


def test_save_load_round_trip_gives_identical_scores_and_can_grow(random_data, tmp_path):
    codebook, db_x, db_ids, q_x, q_ids = random_data(seed=5)
    for binary in (True, False):
        index = ASMK(codebook, binary=binary, use_idf=True, alpha=2.0, similarity_threshold=0.1,
                     multiple_assignment=2, query_multiple_assignment=3)
        first = db_ids < 4
        index.add(db_x[first], db_ids[first])
        path = tmp_path / f"index_{binary}.h5"
        index.save(path)
        loaded = ASMK.load(path)
        assert loaded.params == index.params
        assert torch.equal(loaded.codebook, index.codebook)
        assert torch.equal(loaded.scores(q_x, q_ids), index.scores(q_x, q_ids))
        with h5py.File(path) as f:
            assert f.attrs["type"] == "lit.asmk.ASMK" and f.attrs["version"] == FORMAT_VERSION
        # an index saved once can be extended later
        loaded.add(db_x[~first], db_ids[~first])
        index.add(db_x[~first], db_ids[~first])
        assert torch.equal(loaded.scores(q_x, q_ids), index.scores(q_x, q_ids))
        state = loaded.state_dict()
        assert torch.equal(ASMK.from_state(state).scores(q_x, q_ids), loaded.scores(q_x, q_ids))


def test_chunked_save_load_keeps_unknown_groups_readable(clustered, monkeypatch, tmp_path):
    monkeypatch.setattr(asmk_io, "IO_ROWS", 7)
    codebook, x, ids, qx, qids = clustered(seed=3)
    for binary in (True, False):
        index = ASMK(codebook, binary=binary)
        index.add(x, ids)
        path = tmp_path / f"i{binary}.h5"
        index.save(path, attrs={"shard.lo": 0, "note": "x"})
        with h5py.File(path, "a") as f:  # another tool adds its own metadata
            f.create_group("pipeline").attrs["model"] = "tiny"
            f["pipeline"].create_dataset("names", data=np.array([b"a", b"b"]))
        loaded = ASMK.load(path)
        assert np.array_equal(loaded.state_dict()["vectors"], index.state_dict()["vectors"])
        assert torch.equal(loaded.scores(qx, qids), index.scores(qx, qids))


@pytest.mark.parametrize("kind", ["binary", "real"])
def test_files_written_before_the_split_load_with_the_same_scores(random_data, tmp_path, kind):
    """index_v1_*.h5 were written by the ASMK class before it was split into modules
    (format version 1); they load, score as they did, and a re-save writes the same layout."""
    codebook, db_x, db_ids, q_x, q_ids = random_data(seed=5)
    old = os.path.join(DATA, f"index_v1_{kind}.h5")
    loaded = ASMK.load(old)
    want = np.load(os.path.join(DATA, "index_v1_scores.npz"))[f"scores_{kind}"]
    assert np.array_equal(loaded.scores(q_x, q_ids).numpy(), want)
    fresh = ASMK(codebook, binary=kind == "binary", use_idf=True, alpha=2.0, similarity_threshold=0.1,
                 multiple_assignment=2, query_multiple_assignment=3)
    fresh.add(db_x, db_ids)
    fresh.save(tmp_path / "new.h5", attrs={"shard.lo": 0, "shard.hi": 7})
    with h5py.File(old) as a, h5py.File(tmp_path / "new.h5") as b:
        assert dict(a.attrs) == dict(b.attrs) and set(a) == set(b)
        for key in a:
            assert a[key].dtype == b[key].dtype and np.array_equal(a[key][()], b[key][()]), key


def test_an_index_in_a_group_beside_other_groups(clustered, tmp_path):
    """write_asmk/from_group work on any open group: the owner of the index file puts the
    ASMK part where it likes and its own groups beside it."""
    codebook, x, ids, qx, qids = clustered(seed=5)
    index = ASMK(codebook, use_idf=True)
    index.add(x, ids)
    path = tmp_path / "combined.h5"
    with h5py.File(path, "w") as f:
        f.create_group("pipeline").attrs["model"] = "tiny"
        asmk_io.write_asmk(f.create_group("asmk"), index, attrs={"note": "part"})
        f.create_group("text").create_dataset("embeddings", data=np.zeros((3, 4), np.float32))
    with h5py.File(path, "r") as f:
        loaded = ASMK.from_group(f["asmk"])
        header = asmk_io.read_header(f["asmk"])
        state = asmk_io.read_state(f["asmk"])
        assert torch.equal(loaded.scores(qx, qids), index.scores(qx, qids))
        assert header.n_images == 60 and header.attrs["note"] == "part"
        assert np.array_equal(header.entries_per_word, index.ivf.entries_per_word().numpy())
        assert np.array_equal(header.codebook, codebook)
        assert np.array_equal(state["vectors"][:], index.state_dict()["vectors"])
        with pytest.raises(IndexFileError, match=r"combined\.h5:/pipeline: not an ASMK index"):
            ASMK.from_group(f["pipeline"])


def _saved(random_data, tmp_path):
    codebook, db_x, db_ids, _, _ = random_data()
    index = ASMK(codebook)
    index.add(db_x, db_ids)
    path = tmp_path / "index.h5"
    index.save(path)
    return path


def test_load_truncated_file_raises_value_error(random_data, tmp_path):
    path = _saved(random_data, tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"index\.h5.*(truncated|corrupt)"):
        ASMK.load(path)
    with pytest.raises(IndexFileError):
        ASMK.load(path)


def test_load_other_version_raises_value_error(random_data, tmp_path):
    path = _saved(random_data, tmp_path)
    with h5py.File(path, "a") as f:
        f.attrs["version"] = FORMAT_VERSION + 1
    with pytest.raises(ValueError, match=r"index\.h5.*version 2"):
        ASMK.load(path)


def test_load_non_hdf5_file_raises_value_error(tmp_path):
    path = tmp_path / "index.h5"
    path.write_bytes(b"\x80\x04 this is a pickle, not HDF5" * 20)
    with pytest.raises(ValueError, match=r"index\.h5.*not an HDF5 file"):
        ASMK.load(path)
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f.attrs["type"] = "something.else"
    with pytest.raises(ValueError, match=r"other\.h5.*not an ASMK index"):
        ASMK.load(other)
    with pytest.raises(FileNotFoundError):
        ASMK.load(tmp_path / "missing.h5")


@pytest.mark.parametrize("damage", ["dataset", "offsets", "vectors", "params"])
def test_every_damage_is_one_index_file_error_naming_the_file(random_data, tmp_path, damage):
    path = _saved(random_data, tmp_path)
    with h5py.File(path, "a") as f:
        if damage == "dataset":
            del f["image_ids"]
        elif damage == "offsets":
            data = f["offsets"][()]
            data[3] = data[-1] + 5
            f["offsets"][...] = data
        elif damage == "vectors":
            del f["vectors"]
            f.create_dataset("vectors", data=np.zeros((2, 3), np.float32))
        else:
            f.attrs["params.alpha"] = -1.0
    with pytest.raises(IndexFileError, match=r"^.*index\.h5: "):
        ASMK.load(path)
