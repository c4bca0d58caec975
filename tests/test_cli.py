"""Every command of the ``lit`` command line on tiny data, run in this process (``cli``
fixture of conftest.py); ``python -m lit`` itself once."""

import csv
import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import lit
from lit.asmk import ASMK
from lit.features import FeatureStore
from lit.models import save_checkpoint

PHOTOS = os.path.join(os.path.dirname(lit.__file__), "assets", "photos")


@pytest.fixture
def ckpt(tmp_path, tiny_model):
    path = tmp_path / "model.pt"
    save_checkpoint(tiny_model, path)
    return path


@pytest.fixture
def folder(tmp_path):
    """Good images, and the awkward ones: corrupt, zero-byte, CMYK, 16-bit, text."""
    d = tmp_path / "images"
    (d / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)).save(d / f"good{i}.jpg")
    Image.fromarray(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)).convert("CMYK").save(d / "cmyk.jpg")
    Image.fromarray(rng.integers(0, 65535, (60, 80), dtype=np.uint16)).save(d / "sub" / "deep16.png")
    (d / "zero.jpg").write_bytes(b"")
    (d / "notes.png").write_text("this is text, not an image")
    data = (d / "good0.jpg").read_bytes()
    (d / "corrupt.jpg").write_bytes(data[:200])
    return d


def test_help_explains_every_command(cli):
    proc = subprocess.run([sys.executable, "-m", "lit", "--help"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout  # `python -m lit` itself
    for cmd in ("extract", "index", "search", "match", "plot-attention", "evaluate", "download", "demo", "models"):
        assert cmd in out
    assert "--batch-size" in cli("extract", "--help").stdout
    assert "--pairs" in cli("search", "--help").stdout


def test_extract_index_search_pipeline(tmp_path, folder, ckpt, cli):
    feats = tmp_path / "feats.h5"
    proc = cli("extract", folder, "--out", feats, "--model", ckpt, "--device", "cpu", "--quiet", ok=False)
    assert proc.returncode == 3  # finished with skipped files
    assert "extracted 5 images" in proc.stdout and "3 failed" in proc.stdout
    for bad in ("zero.jpg", "notes.png", "corrupt.jpg"):
        assert bad in proc.stderr
    with FeatureStore(feats) as store:
        assert sorted(store.names) == ["cmyk.jpg", "good0.jpg", "good1.jpg", "good2.jpg", "sub/deep16.png"]
        assert set(store.failed) == {"zero.jpg", "notes.png", "corrupt.jpg"}
    again = cli("extract", folder, "--out", feats, "--model", ckpt, "--device", "cpu", "--quiet", "--no-retry", ok=False)
    assert again.returncode == 3 and "extracted 0 images, skipped 5 already done, 0 failed, 3 earlier" in again.stdout

    index = tmp_path / "index.h5"
    proc = cli("index", feats, "--out", index, "--codebook-size", "8", "--device", "cpu")
    assert "indexed 5 images" in proc.stdout
    res_json, res_csv, pairs, plot = (tmp_path / n for n in ("r.json", "r.csv", "pairs.txt", "r.png"))
    cli("search", index, folder / "good1.jpg", "--model", ckpt, "--device", "cpu", "--topk", "3",
        "--json", res_json, "--csv", res_csv, "--pairs", pairs, "--plot", plot, "--db-root", folder)
    results = json.loads(res_json.read_text())["queries"]
    # the same search through the Python API
    model = lit.load_model(ckpt)
    q = model.extract(folder / "good1.jpg")
    ranks, scores = ASMK.load(index).search(q.descriptors, np.zeros(len(q), dtype=np.int64), topk=3)
    with FeatureStore(feats) as store:
        expected = [store.names[int(i)] for i in ranks[0]]
    assert [h["name"] for h in results[0]["results"]] == expected
    np.testing.assert_allclose([h["score"] for h in results[0]["results"]], np.asarray(scores[0]), rtol=1e-5)
    assert [h["rank"] for h in results[0]["results"]] == [1, 2, 3]
    rows = list(csv.DictReader(res_csv.open()))
    assert [r["name"] for r in rows] == expected
    lines = pairs.read_text().splitlines()
    # one name convention: the query relative to its root (the folder of the one query file), like the database names
    assert [ln.split() for ln in lines] == [["good1.jpg", name] for name in expected]
    assert json.loads(res_json.read_text())["query_root"] == str(folder)
    assert Image.open(plot).size[0] > 200


def test_match_and_plots(tmp_path, ckpt, cli):
    a = os.path.join(PHOTOS, "sacre_coeur", "sacre_coeur1.jpg")
    b = os.path.join(PHOTOS, "sacre_coeur", "sacre_coeur2.jpg")
    out_png, out_json = tmp_path / "m.png", tmp_path / "m.json"
    proc = cli("match", a, b, "--model", ckpt, "--device", "cpu", "--threshold", "0.5", "--plot", out_png, "--json", out_json)
    assert "matches" in proc.stdout
    m = json.loads(out_json.read_text())
    assert m["matches"] == len(m["indices_a"]) == len(m["positions_b"])
    assert all(s >= 0.5 for s in m["similarity"])
    img = Image.open(out_png)
    assert img.size[0] > 400 and len(np.unique(np.asarray(img.convert("L")))) > 10
    att = tmp_path / "att.pdf"
    cli("plot-attention", a, "--model", ckpt, "--device", "cpu", "--top", "4", "--out", att)
    assert att.read_bytes()[:4] == b"%PDF"


def test_default_model_matches_sacre_coeur_on_the_building(tmp_path, cli):
    """The shipped lit-effl0 (the default model) under its own calibrated rule (no
    --threshold / --margin: the background test): the day and night Sacre-Coeur photos
    share super-features, and they lie on the building. Boxes drawn by hand around the building (basilica and towers, no sky, no
    square) in the 512-px images the model sees."""
    a = os.path.join(PHOTOS, "sacre_coeur", "sacre_coeur1.jpg")  # 512 x 366 at runtime size
    b = os.path.join(PHOTOS, "sacre_coeur", "sacre_coeur2.jpg")  # 384 x 512
    out = tmp_path / "m.json"
    cli("match", a, b, "--device", "cpu", "--json", out)
    m = json.loads(out.read_text())
    rule = lit.load_model("lit-effl0").match_rule()  # the rule in its weights file
    assert m["threshold"] == rule.threshold and m["margin"] == rule.margin and m["matches"] >= 1
    for (xa, ya), (xb, yb) in zip(m["positions_a"], m["positions_b"]):
        assert 60 <= xa <= 430 and 30 <= ya <= 320, (xa, ya)
        assert 30 <= xb <= 384 and 80 <= yb <= 370, (xb, yb)


def test_download_model_from_a_registry_file(tmp_path, ckpt, cli):
    digest = hashlib.sha256(ckpt.read_bytes()).hexdigest()
    reg = tmp_path / "models.json"
    reg.write_text(json.dumps([{"name": "tiny-cli", "url": ckpt.as_uri(), "filename": "tiny.pt", "sha256": digest}]))
    env = {"LIT_REGISTRY": str(reg), "LIT_CACHE": str(tmp_path / "cache")}
    proc = cli("download", "tiny-cli", "--quiet", env=env)
    assert proc.stdout.strip().endswith("tiny.pt") and (tmp_path / "cache" / "tiny.pt").is_file()
    assert "tiny-cli" in cli("models", env=env).stdout
    bad = cli("download", "no-such-thing", ok=False, env=env)
    assert bad.returncode == 2 and "unknown name" in bad.stderr


def test_user_errors_are_one_line_without_traceback(tmp_path, ckpt, cli):
    cases = [
        ("match", tmp_path / "missing.jpg", tmp_path / "missing2.jpg", "--model", ckpt, "--device", "cpu"),
        ("extract", tmp_path / "nowhere", "--out", tmp_path / "x.h5", "--model", ckpt),
        ("index", tmp_path / "missing.h5", "--out", tmp_path / "i.h5"),
        ("match", "a.jpg", "b.jpg", "--model", tmp_path / "missing.pt"),
        # one past the last GPU: "no CUDA" here, "this machine has N CUDA devices" on a GPU machine
        ("extract", PHOTOS, "--out", tmp_path / "x.h5", "--model", ckpt, "--device", f"cuda:{torch.cuda.device_count()}"),
    ]
    for args in cases:
        proc = cli(*args, ok=False)
        assert proc.returncode == 2, (args, proc.stderr)
        assert "Traceback" not in proc.stderr and proc.stderr.startswith("lit ")
        assert len(proc.stderr.strip().splitlines()) <= 3


@pytest.mark.slow
def test_demo_runs_offline(tmp_path, cli):
    proc = cli("demo", "--out", tmp_path / "figs", "--device", "cpu")
    assert "mAP over 12 queries" in proc.stdout
    for name in ("demo_attention.png", "demo_matches.png", "demo_retrieval.png"):
        assert Image.open(tmp_path / "figs" / name).size[0] > 300
