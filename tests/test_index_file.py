"""lit.index_file: the index file is self-contained; an old index with a sidecar still loads, with a note;
a few names are found without reading the others."""

import dataclasses
import json
import os
import shutil

import h5py
import numpy as np
import pytest
from feature_files import BAD_NAME, write_feature_file

from lit import pipeline
from lit.asmk import ASMK
from lit.errors import IndexFileError
from lit.index_file import IndexInfo, load_index, write_index


def test_index_file_is_self_contained(tmp_path):
    feats = tmp_path / "f.h5"
    write_feature_file(feats)
    index, info = pipeline.build_index(feats, size=8, image_root=tmp_path / "photos")
    info = dataclasses.replace(info, names=info.names[:3] + (BAD_NAME,))  # bytes that are not UTF-8 survive
    out = tmp_path / "i.h5"
    write_index(out, index, info)
    # copy the index alone somewhere else, and remove the feature file
    other = tmp_path / "elsewhere"
    other.mkdir()
    shutil.copy(out, other / "i.h5")
    feats.unlink()
    index2, info2 = load_index(other / "i.h5")
    assert info2 == info
    assert info2.names[3] == BAD_NAME and os.fsencode(info2.names[3]) == b"scene_b/caf\xe9.jpg"
    assert info2.image_root == str(tmp_path / "photos") and info2.fingerprint == "fp-a"
    assert info2.codebook_size == 8 and info2.descriptors == 160
    np.testing.assert_array_equal(index2.codebook.numpy(), index.codebook.numpy())
    with h5py.File(other / "i.h5") as f:
        assert "pipeline" in f and f["pipeline"].attrs["format"] == "lit-index-pipeline"


def test_old_index_with_sidecar_still_loads_with_a_note(tmp_path, caplog):
    index = ASMK(np.random.default_rng(0).normal(size=(8, 8)).astype(np.float32))
    index.add(np.ones((3, 8), np.float32), np.array([0, 1, 1]))
    index.save(tmp_path / "old.h5")
    (tmp_path / "old.h5.names.json").write_text(json.dumps({"features": "f.h5", "names": ["a.jpg", "b.jpg"]}))
    with caplog.at_level("INFO", logger="lit"):
        _, info = load_index(tmp_path / "old.h5")
    assert info.names == ("a.jpg", "b.jpg") and info.legacy and info.fingerprint is None
    assert "older lit" in caplog.text
    (tmp_path / "old.h5.names.json").unlink()
    with pytest.raises(IndexFileError, match="without image names"):
        load_index(tmp_path / "old.h5")


def _index_of_names(path, names):
    index = ASMK(np.eye(8, dtype=np.float32), binary=True)
    write_index(path, index, IndexInfo(names=tuple(names)))
    return path


@pytest.mark.parametrize("count", [1, 9000])  # one bucket; several chunks of the lookup table
def test_names_are_looked_up_without_reading_the_others(tmp_path, count, monkeypatch):
    from lit import index_file

    names = [f"img/{i:05d}.jpg" for i in range(count - 1)] + [BAD_NAME]
    path = _index_of_names(tmp_path / "i.h5", names)
    info = index_file.read_info_base(path, names=False)
    assert len(info.names) == count

    def no_full_read(*args):
        raise AssertionError("every name read")

    monkeypatch.setattr(index_file, "_read_names", no_full_read)
    asked = [names[-1], names[0], "no/such.jpg", names[count // 2]]
    assert info.names.lookup(asked) == {names[-1]: count - 1, names[0]: 0, names[count // 2]: count // 2}
    monkeypatch.undo()
    assert list(info.names) == names  # read when asked for


def test_names_of_a_file_without_a_lookup_table_are_found_by_reading_them(tmp_path):
    from lit import index_file

    names = ["a.jpg", "b.jpg", "c.jpg"]
    path = _index_of_names(tmp_path / "i.h5", names)
    with h5py.File(path, "a") as f:  # as lit wrote them before the table
        for key in ("name_hashes", "name_ids", "name_buckets"):
            del f["pipeline"][key]
    assert index_file.read_info_base(path, names=False).names.lookup(["c.jpg", "d.jpg"]) == {"c.jpg": 2}


def test_names_of_a_replaced_file_are_not_read_from_the_new_one(tmp_path):
    from lit import index_file

    path = _index_of_names(tmp_path / "i.h5", ["a.jpg", "b.jpg"])
    info = index_file.read_info_base(path, names=False)
    _index_of_names(tmp_path / "i.h5", ["c.jpg", "d.jpg"])  # another generation at the same path
    with pytest.raises(IndexFileError, match="replaced"):
        info.names.lookup(["a.jpg"])
