"""Search an index by text (lit.text.search, lit.text.store) through the command line and the API."""

import json
import os

import h5py
import numpy as np
import pytest
from PIL import Image

import lit

PHOTOS = os.path.join(os.path.dirname(lit.__file__), "assets", "photos")


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory):
    from skimage import data

    d = tmp_path_factory.mktemp("photos")
    Image.fromarray(data.chelsea()).save(d / "cat.png")
    Image.fromarray(data.coffee()).save(d / "coffee.png")
    for name in ("sacre_coeur1.jpg", "sacre_coeur2.jpg"):
        Image.open(os.path.join(PHOTOS, "sacre_coeur", name)).save(d / name)
    return d


def test_cli_text_search_round_trip(tmp_path, photo_dir, text_model, cli):
    feats, index = tmp_path / "f.h5", tmp_path / "i.h5"
    cli("extract", photo_dir, "--out", feats, "--scales", "1", "--image-size", "256", "--device", "cpu", "--quiet")
    with h5py.File(feats) as h5:
        assert h5["global/effl0/valid"][:4].tolist() == [1, 1, 1, 1]
    assert "4 global image embeddings" in cli("index", feats, "--out", index, "--codebook-size", "16", "--device", "cpu").stderr
    queries = tmp_path / "q.txt"
    queries.write_text("a cat\n\n# comment\na cup of coffee\n")
    out = tmp_path / "r.json"
    cli("search", index, "--text", "a church", "--text-file", queries, "--json", out, "--topk", "2",
        "--csv", tmp_path / "r.csv", "--plot", tmp_path / "r.png", "--db-root", photo_dir)
    res = json.loads(out.read_text())["queries"]  # lit.pipeline.write_json: {"db_root", "query_root", "queries"}
    assert [r["query"] for r in res] == ["a church", "a cat", "a cup of coffee"]
    assert [sorted(h) for h in res[0]["results"]] == [["calibrated", "name", "rank", "score"]] * 2
    assert res[0]["results"][0]["name"].startswith("sacre_coeur")
    assert [r["results"][0]["name"] for r in res[1:]] == ["cat.png", "coffee.png"]
    # the same search through the Python API
    api, _ = lit.text.search_index_by_text(index, ["a church", "a cat", "a cup of coffee"], text_model, topk=2)
    assert [[h["name"] for h in r["results"]] for r in api] == [[h["name"] for h in r["results"]] for r in res]
    np.testing.assert_allclose([h["score"] for r in api for h in r["results"]],
                               [h["score"] for r in res for h in r["results"]], rtol=1e-5)
    refused = cli("search", index, "--text", "a church", "--pairs", tmp_path / "p.txt", ok=False)
    assert refused.returncode == 2 and "text queries" in refused.stderr and not (tmp_path / "p.txt").exists()
    assert Image.open(tmp_path / "r_001.png").size[0] > 200  # one figure per query
    bad = cli("search", index, "--text", "  ", ok=False)
    assert bad.returncode == 2 and "empty" in bad.stderr
    typed = cli("search", index, "--text", "a cat\x1b]0;pwned\x07\x1b[2J", "--topk", "1").stdout  # typed text is shown, not run
    assert "\x1b" not in typed and "\x07" not in typed and typed.startswith("a cat\\x1b]0;pwned\\x07\\x1b[2J\n")


def test_index_without_embeddings_says_how_to_add_them(tmp_path, photo_dir, cli):
    feats, index = tmp_path / "f.h5", tmp_path / "i.h5"
    cli("extract", photo_dir, "--out", feats, "--scales", "1", "--image-size", "256", "--device", "cpu", "--quiet",
        "--text-model", "none")
    assert "lit text embed" in cli("index", feats, "--out", index, "--codebook-size", "16", "--device", "cpu").stderr
    bad = cli("search", index, "--text", "a cat", ok=False)
    assert bad.returncode == 2 and "lit text embed" in bad.stderr
    cli("text", "embed", feats, "--root", photo_dir, "--index", index, "--quiet")
    res = cli("search", index, "--text", "a cat", "--topk", "1").stdout
    assert "cat.png" in res


def test_query_files_are_utf_8_text_and_their_problems_are_one_line(tmp_path):
    from lit.text.search import read_text_file

    (tmp_path / "bom.txt").write_bytes(b"\xef\xbb\xbfa church\r\n# skipped\n\na cat\n")  # as Windows editors save
    assert read_text_file(tmp_path / "bom.txt") == ["a church", "a cat"]
    (tmp_path / "latin1.txt").write_bytes("a church\nun caf\u00e9\n".encode("latin-1"))
    with pytest.raises(lit.errors.UsageError) as err:
        read_text_file(tmp_path / "latin1.txt")
    msg = str(err.value)
    assert msg.count("\n") == 0 and msg.startswith(f"{tmp_path / 'latin1.txt'}, line 2: not UTF-8 text (byte 0xe9"), msg
    with pytest.raises(lit.errors.UsageError, match="is a folder, not a query file"):
        read_text_file(tmp_path)
    with pytest.raises(lit.errors.NotFoundError, match="no such query file"):
        read_text_file(tmp_path / "missing.txt")
