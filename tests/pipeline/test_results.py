"""lit.pipeline.results: JSON, CSV and pairs outputs share one name convention; plot paths and scenes."""

import csv
import dataclasses
import json
import os

import pytest
from feature_files import BAD_NAME, write_feature_file

from lit import pipeline


def test_outputs_share_one_name_convention_and_keep_bytes(tmp_path):
    feats = write_feature_file(tmp_path / "f.h5")
    index, info = pipeline.build_index(tmp_path / "f.h5", size=8)
    info = dataclasses.replace(info, names=info.names[:3] + (BAD_NAME,))
    res = pipeline.search(index, info, feats[3:], [BAD_NAME], topk=3)
    pipeline.write_json(res, tmp_path / "r.json", "/db", "/q")
    pipeline.write_csv(res, tmp_path / "r.csv")
    pipeline.write_pairs(res, tmp_path / "p.txt")
    text = (tmp_path / "r.json").read_text(encoding="utf-8")  # valid UTF-8
    assert "\\udc" not in text  # no lone surrogates, which strict JSON readers refuse
    data = json.loads(text)
    assert data["db_root"] == "/db" and data["query_root"] == "/q" and "db_root_bytes" not in data
    query = data["queries"][0]
    assert query["query"] == "scene_b/caf\\xe9.jpg" and query["query_bytes"] == b"scene_b/caf\xe9.jpg".hex()
    assert pipeline.json_name(query, "query") == BAD_NAME  # the exact name, back
    hits = query["results"]
    assert [pipeline.json_name(h, "name") for h in hits] == [h.name for h in res[0].hits]
    assert all(("name_bytes" in h) == (h["name"] != n.name) for h, n in zip(hits, res[0].hits, strict=True))
    rows = list(csv.reader((tmp_path / "r.csv").open(encoding="utf-8", newline="")))  # valid UTF-8
    assert rows[0] == ["query", "rank", "name", "score"] and [r[2] for r in rows[1:]] == [h["name"] for h in hits]
    assert rows[1][0] == "scene_b/caf\\xe9.jpg"
    assert float(rows[1][3]) == pytest.approx(res[0].hits[0].score, rel=1e-5)
    raw = (tmp_path / "p.txt").read_bytes().splitlines()  # pairs: the bytes the readers open the files by
    assert raw[0] == b"scene_b/caf\xe9.jpg " + os.fsencode(res[0].hits[0].name)
    assert pipeline.read_pairs(tmp_path / "p.txt")[0] == (BAD_NAME, res[0].hits[0].name)


def test_control_characters_in_names_never_split_a_line_of_csv_or_reach_json_raw(tmp_path):
    odd = "scene_a/two\nlines\x1b[2J.jpg"
    res = [pipeline.QueryResult("church\x1b]0;pwned\x07", (pipeline.Hit(1, odd, 0.5),))]
    pipeline.write_json(res, tmp_path / "r.json")
    pipeline.write_csv(res, tmp_path / "r.csv")
    data = json.loads((tmp_path / "r.json").read_text(encoding="utf-8"))
    query = data["queries"][0]
    assert query["query"] == "church\\x1b]0;pwned\\x07" and query["results"][0]["name"] == "scene_a/two\\nlines\\x1b[2J.jpg"
    assert pipeline.json_name(query["results"][0], "name") == odd and pipeline.json_name(query, "query") == res[0].query
    lines = (tmp_path / "r.csv").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 2 and "\x1b" not in lines[1] and "two\\nlines" in lines[1]
    with pytest.raises(pipeline.PipelineError, match="cannot hold names with spaces") as err:
        pipeline.write_pairs(res, tmp_path / "p.txt")
    assert "\n" not in str(err.value) and "\x1b" not in str(err.value)
    assert not (tmp_path / "p.txt").exists()


def test_a_byte_order_mark_is_dropped_from_a_pairs_file(tmp_path):
    (tmp_path / "p.txt").write_bytes(b"\xef\xbb\xbfa.jpg b.jpg\n")
    assert pipeline.read_pairs(tmp_path / "p.txt") == [("a.jpg", "b.jpg")]


def test_plot_paths_one_figure_per_query():
    assert pipeline.plot_paths("r.svg", 1) == ["r.svg"]
    assert pipeline.plot_paths("out/r.png", 3) == ["out/r_001.png", "out/r_002.png", "out/r_003.png"]


def test_scene_of():
    assert pipeline.scene_of("a/b/c.jpg") == "b" and pipeline.scene_of("c.jpg") is None
