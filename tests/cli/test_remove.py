"""`lit remove` and `lit index --stats` (the command modules, called in-process): names from
arguments and a list, unknown names reported, what the index holds shown."""

import os
import zlib

import numpy as np
import torch

from lit.cli import main
from lit.features import FeatureStore, open_features
from lit.index_file import IndexInfo, read_info, write_index
from lit.pipeline import index_collection
from lit.pipeline.live import add_images
from lit.types import LocalFeatures

D = 16
NAMES = [f"a/{i:03d}" for i in range(20)]


def features(path, names):
    with FeatureStore(path, "a", descriptor_dim=D, fingerprint="fp") as store:
        for n in names:
            rng = np.random.default_rng(zlib.crc32(n.encode()))
            d = torch.from_numpy(rng.standard_normal((6, D)).astype(np.float32))
            store.append(n, LocalFeatures(d, torch.ones(6), torch.ones(6), torch.arange(6)))
    return os.fspath(path)


def index(tmp_path):
    cb = np.random.default_rng(0).standard_normal((8, D)).astype(np.float32)
    with open_features(features(tmp_path / "f.h5", NAMES)) as coll:
        idx = index_collection(cb, coll)
        write_index(tmp_path / "i.h5", idx, IndexInfo(names=tuple(coll.names), fingerprint="fp", codebook_source="cb.npy"))
    return os.fspath(tmp_path / "i.h5")


def test_remove_takes_names_and_a_list_and_reports_unknown_ones(tmp_path, capsys):
    path = index(tmp_path)
    listed = tmp_path / "names.txt"
    listed.write_text("# photos taken down\na/003\n\nno/such\n")
    assert main(["remove", path, "a/001", "a/002", "--list", str(listed)]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("removed 3 images, 1 unknown") and "not in the index: no/such" in err
    assert list(read_info(path).names) == [n for n in NAMES if n not in ("a/001", "a/002", "a/003")]
    assert main(["remove", path]) == 2 and "no names given" in capsys.readouterr().err


def test_index_stats_show_images_pending_changes_and_the_codebook(tmp_path, capsys):
    path = index(tmp_path)
    add_images(path, features=features(tmp_path / "new.h5", ["b/000"]), device="cpu")
    main(["remove", path, "a/000"])
    capsys.readouterr()
    assert main(["index", "--stats", path, "--device", "cpu"]) == 0
    lines = dict(line.split(": ", 1) for line in capsys.readouterr().out.splitlines())
    assert lines["images"] == "20" and lines["base_images"] == "20" and lines["journal_added"] == "1"
    assert lines["removed_pending"] == "1" and lines["words"] == "8" and lines["codebook_source"] == '"cb.npy"'
    assert main(["index", path]) == 2 and "--out is required" in capsys.readouterr().err
    assert main(["index", "--compact", path, "--device", "cpu"]) == 0
    assert "compacted 1 journal segments and 1 removed images" in capsys.readouterr().out
    assert not [f for f in os.listdir(path + ".live") if f.startswith("seg-")]
    assert list(read_info(path).names) == NAMES[1:] + ["b/000"]
