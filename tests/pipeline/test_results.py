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
    data = json.loads((tmp_path / "r.json").read_text(errors="surrogateescape"))
    assert data["db_root"] == "/db" and data["query_root"] == "/q"
    assert data["queries"][0]["query"] == BAD_NAME
    names = [h["name"] for h in data["queries"][0]["results"]]
    rows = list(csv.reader((tmp_path / "r.csv").open(encoding="utf-8", errors="surrogateescape")))
    assert rows[0] == ["query", "rank", "name", "score"] and [r[2] for r in rows[1:]] == names
    assert float(rows[1][3]) == pytest.approx(res[0].hits[0].score, rel=1e-5)
    raw = (tmp_path / "p.txt").read_bytes().splitlines()
    assert raw[0] == b"scene_b/caf\xe9.jpg " + os.fsencode(names[0])


def test_plot_paths_one_figure_per_query():
    assert pipeline.plot_paths("r.svg", 1) == ["r.svg"]
    assert pipeline.plot_paths("out/r.png", 3) == ["out/r_001.png", "out/r_002.png", "out/r_003.png"]


def test_scene_of():
    assert pipeline.scene_of("a/b/c.jpg") == "b" and pipeline.scene_of("c.jpg") is None
