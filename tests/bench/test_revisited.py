"""The revisited benchmark end to end on a tiny dataset in the real on-disk formats."""

import json
import pickle
import subprocess
import sys

import numpy as np
import pytest
from photo_folders import revisited_dataset, texture
from PIL import Image

from lit.models import save_checkpoint


@pytest.fixture
def tiny_world(tmp_path, tiny_model):
    rng = np.random.default_rng(0)
    root = tmp_path / "data"
    revisited_dataset(root, rng)
    # an SfM-120k style database for the codebook
    sfm = root / "retrieval-SfM-120k"
    cids = [f"{i:08x}abcdef" for i in range(6)]
    for cid in cids:
        path = sfm / "ims" / cid[-2:] / cid[-4:-2] / cid[-6:-4] / cid
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(texture(rng)).save(path, format="JPEG")
    db = {split: {"cids": cids, "cluster": [0, 0, 1, 1, 2, 2], "qidxs": [0, 2], "pidxs": [1, 3]} for split in ("train", "val")}
    with open(sfm / "retrieval-SfM-120k.pkl", "wb") as f:
        pickle.dump(db, f)
    # distractors in the revisitop1m layout
    r1m = root / "revisitop1m" / "jpg" / "00"
    r1m.mkdir(parents=True)
    names = []
    for i in range(4):
        Image.fromarray(texture(rng)).save(r1m / f"d{i}.jpg")
        names.append(f"00/d{i}.jpg")
    (root / "revisitop1m" / "revisitop1m.txt").write_text("\n".join(names) + "\n")
    ckpt = tmp_path / "model.pt"
    save_checkpoint(tiny_model, ckpt)
    return root, ckpt


def test_benchmark_runs_end_to_end_and_caches(tiny_world, tmp_path, cli):
    root, ckpt = tiny_world
    out = tmp_path / "res.json"
    common = ["--dataset", "tinyox", "--data-root", root, "--model", ckpt, "--device", "cpu",
              "--codebook-size", "16", "--workers", "0", "--quiet"]
    proc = cli("evaluate", *common, "--sfm-root", root, "--codebook-images", "6", "--json", out)
    assert "Medium" in proc.stdout and "tinyox" in proc.stdout
    res = json.loads(out.read_text())
    for protocol in ("easy", "medium", "hard"):
        assert 0 <= res["results"][protocol]["map"] <= 100
        assert len(res["results"][protocol]["mp@k"]) == 3
    assert res["codebook_size"] == 16 and res["distractors"] == 0
    assert set(res["timings"]) >= {"extract_tinyox-db_s", "codebook_s", "index_s", "search_s"}
    cache = root / "lit-cache"
    assert len(list(cache.glob("tinyox-db-*.h5"))) == 1 and len(list(cache.glob("codebook-*.npy"))) == 1
    # the rerun reuses everything: the same numbers
    out2 = tmp_path / "res2.json"
    cli("evaluate", *common, "--sfm-root", root, "--codebook-images", "6", "--json", out2)
    assert json.loads(out2.read_text())["results"] == res["results"]
    # +distractors: 4 more images, ranks mapped back so the dataset's gnd still applies
    out3 = tmp_path / "res3.json"
    proc = cli("evaluate", *common, "--sfm-root", root, "--codebook-images", "6", "--distractors", "r1m", "--json", out3)
    res3 = json.loads(out3.read_text())
    assert res3["distractors"] == 4 and "tinyox+1M" in proc.stdout
    assert res3["results"]["medium"]["map"] <= res["results"]["medium"]["map"] + 1e-9


def test_benchmark_reports_missing_images(tiny_world, cli):
    root, ckpt = tiny_world
    (root / "tinyox" / "jpg" / "land0_0.jpg").unlink()
    proc = cli("evaluate", "--dataset", "tinyox", "--data-root", root, "--model", ckpt, "--device", "cpu", ok=False)
    assert proc.returncode == 2
    assert "missing" in proc.stderr and "land0_0.jpg" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_sharded_r1m_over_torchrun_gives_the_single_process_rankings(tiny_world, tmp_path):
    """2 gloo processes share the distractors: each extracts and indexes its block of R1M and
    ranks its id range; rank 0 merges. Same rankings (and so the same mAP) as one process."""
    import os

    root, ckpt = tiny_world
    common = ["--dataset", "tinyox", "--data-root", root, "--model", ckpt, "--device", "cpu", "--codebook-size", "16",
              "--workers", "0", "--quiet", "--sfm-root", root, "--codebook-images", "6", "--distractors", "r1m"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}  # same CPU rounding in both runs

    def run(prefix, name):
        cmd = [*prefix, "-m", "lit", "evaluate", *map(str, common), "--json", tmp_path / f"{name}.json",
               "--save-ranks", tmp_path / f"{name}.npy"]
        proc = subprocess.run(list(map(str, cmd)), capture_output=True, text=True, timeout=300, env=env)
        assert proc.returncode == 0, proc.stderr[-4000:]
        return json.loads((tmp_path / f"{name}.json").read_text()), np.load(tmp_path / f"{name}.npy")

    single, single_ranks = run([sys.executable], "single")
    sharded, sharded_ranks = run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"],
                                 "sharded")
    cache = root / "lit-cache"
    assert len(list(cache.glob("r1m-index-*.00000-of-00002.h5"))) == 1  # one cached part per rank
    assert len(list(cache.glob("r1m-*.00001-of-00002.h5"))) == 2  # rank 1's features and index part
    assert single["distractors"] == sharded["distractors"] == 4 and sharded["processes"] == 2
    assert single_ranks.shape == (3, 12 + 4)
    assert np.array_equal(single_ranks, sharded_ranks)
    assert sharded["results"] == single["results"]
