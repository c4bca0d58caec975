"""`lit match --pairs`: many pairs in one process, written as hloc HDF5 or JSON."""

import json
import subprocess
import sys

import h5py
import numpy as np
import torch
from PIL import Image

from lit import pipeline
from lit.models.checkpoint import save_checkpoint


def run(*args):
    return subprocess.run([sys.executable, "-m", "lit", *map(str, args)], capture_output=True, text=True, timeout=300)


def test_pairs_file_gives_the_matches_of_each_pair(tmp_path, tiny_model):
    tiny_model.set_match_rule(pipeline.MatchRule(threshold=0.5))
    save_checkpoint(tiny_model, tmp_path / "tiny.pt")
    (tmp_path / "photos" / "s").mkdir(parents=True)
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)
    Image.fromarray(base).save(tmp_path / "photos" / "s" / "a.png")
    Image.fromarray(base[:, ::-1].copy()).save(tmp_path / "photos" / "s" / "b.png")
    Image.fromarray(base).resize((160, 120)).save(tmp_path / "photos" / "s" / "big.png")  # positions in its own pixels
    (tmp_path / "pairs.txt").write_text("s/a.png s/b.png\ns/a.png s/big.png\n")
    out = run("match", "--pairs", tmp_path / "pairs.txt", "--image-root", tmp_path / "photos", "--model",
              tmp_path / "tiny.pt", "--device", "cpu", "--out", tmp_path / "m.h5")
    assert out.returncode == 0, out.stderr
    assert "s/a.png s/b.png:" in out.stdout and "wrote" in out.stderr and "extract" in out.stderr  # progress
    _, _, fa, fb, m, _ = pipeline.match_images(tiny_model, tmp_path / "photos" / "s" / "a.png",
                                               tmp_path / "photos" / "s" / "b.png")
    with h5py.File(tmp_path / "m.h5") as f:
        g = f["s-a.png/s-b.png"]
        assert g["matches0"].shape == (len(fa),) and (g["matches0"][:] >= 0).sum() == len(m)
        np.testing.assert_array_equal(g["indices"][:], np.stack([m.indices_a.numpy(), m.indices_b.numpy()], 1))
        big = f["s-a.png/s-big.png"]
        if len(big["indices"]):  # the same photo at twice the size: twice the pixel positions
            i = big["indices"][0]
            np.testing.assert_allclose(big["positions1"][0] / 2, big["positions0"][0], atol=8)
            assert i.shape == (2,)
    results, rule = pipeline.match_pairs(tiny_model, pipeline.read_pairs(tmp_path / "pairs.txt"), tmp_path / "photos",
                                         progress=False)
    pipeline.write_matches_json(results, tmp_path / "m.json", rule)  # what --out m.json writes
    doc = json.loads((tmp_path / "m.json").read_text())
    assert [(p["a"], p["b"]) for p in doc["pairs"]] == [("s/a.png", "s/b.png"), ("s/a.png", "s/big.png")]
    assert doc["pairs"][0]["matches"] == len(m)
    torch.testing.assert_close(torch.tensor(doc["pairs"][0]["similarity"]), m.similarity, check_dtype=False)


def test_pairs_mode_refuses_images_and_needs_an_output(tmp_path):
    (tmp_path / "pairs.txt").write_text("a b\n")
    out = run("match", "--pairs", tmp_path / "pairs.txt")
    assert out.returncode == 2 and "--out ending in .h5 or .json" in out.stderr
