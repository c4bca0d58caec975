"""`lit search` after `lit extract` and `lit index`: outputs, one name convention, excluding the query, fingerprints, plots."""

import csv
import json
import shutil

import numpy as np
import pytest
from PIL import Image

import lit
from lit.asmk import ASMK
from lit.features import FeatureStore


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
    # one name convention: the query relative to its root; a single query file keeps its folder (the folder above
    # it is the root), so that its scene is known, like the database names
    assert [ln.split() for ln in lines] == [[f"{folder.name}/good1.jpg", name] for name in expected]
    assert json.loads(res_json.read_text())["query_root"] == str(folder.parent)
    assert Image.open(plot).size[0] > 200


def test_search_prints_topk_excludes_self_and_one_name_convention(collection, tmp_path, cli):
    # a copy of the index alone, in another folder: names and image root travel inside it
    shutil.copy(collection["index"], tmp_path / "copy.h5")
    out = tmp_path / "r.json"
    pairs = tmp_path / "p.txt"
    proc = cli("search", tmp_path / "copy.h5", "--query-features", collection["feats"], "--exclude-self", "--topk", "3", "--keep-unscored",
               "--json", out, "--pairs", pairs, "--verbose", "--device", "cpu")
    data = json.loads(out.read_text())
    assert data["db_root"] == str(collection["photos"])
    for q in data["queries"]:
        names = [h["name"] for h in q["results"]]
        assert len(names) == 3 and q["query"] not in names
    lines = proc.stdout.splitlines()
    assert len(lines) == 4 * (1 + 3)  # every asked result printed
    assert sorted(q["query"] for q in data["queries"]) == ["a/1.jpg", "a/2.jpg", "b/1.jpg", "b/2.jpg"]
    # query images given as a folder: the same names (relative to that folder) and the same results
    cli("search", tmp_path / "copy.h5", collection["photos"], "--exclude-self", "--topk", "3", "--keep-unscored", "--model",
        collection["models"][0], "--device", "cpu", "--json", tmp_path / "r2.json")
    data2 = json.loads((tmp_path / "r2.json").read_text())
    assert [q["query"] for q in data2["queries"]] == [q["query"] for q in data["queries"]]
    for q1, q2 in zip(data["queries"], data2["queries"]):
        assert [h["name"] for h in q1["results"]] == [h["name"] for h in q2["results"]]
    for line in pairs.read_text().splitlines():
        qn, dn = line.split()
        assert qn.count("/") == dn.count("/") == 1  # scene/file on both sides
    # without --exclude-self the query itself comes first
    cli("search", collection["index"], "--query-features", collection["feats"], "--topk", "1", "--json", out, "--device", "cpu")
    assert all(q["results"][0]["name"] == q["query"] for q in json.loads(out.read_text())["queries"])


def test_search_refuses_queries_of_another_model(collection, tmp_path, cli):
    other = tmp_path / "other.h5"
    cli("extract", collection["photos"] / "a", "--out", other, "--model", collection["models"][1], "--device", "cpu", "--quiet")
    bad = cli("search", collection["index"], "--query-features", other, "--device", "cpu", ok=False)
    assert bad.returncode == 2 and "another model" in bad.stderr and "--force" in bad.stderr
    assert "Traceback" not in bad.stderr
    bad = cli("search", collection["index"], collection["photos"] / "a" / "1.jpg", "--model", collection["models"][1],
              "--device", "cpu", ok=False)
    assert bad.returncode == 2 and "another model" in bad.stderr
    forced = cli("search", collection["index"], "--query-features", other, "--device", "cpu", "--force")
    assert "warning" in forced.stderr and "a/1.jpg" in forced.stdout
    bad = cli("index", collection["feats"], "--out", tmp_path / "i.h5", "--train-features", other, "--device", "cpu", ok=False)
    assert bad.returncode == 2 and "training features" in bad.stderr


def test_search_plot_one_figure_per_query_from_the_stored_root(collection, tmp_path, cli):
    proc = cli("search", collection["index"], "--query-features", collection["feats"], "--exclude-self", "--plot",
               tmp_path / "res.svg", "--query-root", collection["photos"], "--device", "cpu", "--topk", "3")
    figs = sorted(p.name for p in tmp_path.iterdir())
    assert figs == [f"res_{i:03d}.svg" for i in range(1, 5)], proc.stderr
    svg = (tmp_path / "res_001.svg").read_text()
    assert svg.lstrip().startswith("<?xml") and "a/1.jpg" in svg and ("✓" in svg or "✗" in svg)
    # without --image-root the index takes the root the feature file records
    proc = cli("index", collection["feats"], "--out", tmp_path / "auto.h5", "--device", "cpu")
    assert f"image root {collection['photos']}" in proc.stdout
    # images no longer where the index says: the message names --db-root
    cli("index", collection["feats"], "--out", tmp_path / "moved.h5", "--device", "cpu", "--image-root", tmp_path / "gone")
    bad = cli("search", tmp_path / "moved.h5", "--query-features", collection["feats"], "--query-root", collection["photos"],
              "--plot", tmp_path / "x.png", "--device", "cpu", ok=False)
    assert bad.returncode == 2 and "--db-root" in bad.stderr and "Traceback" not in bad.stderr
