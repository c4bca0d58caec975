"""Pairs files (hloc / kapture): two names per line; names with spaces are refused, not mangled."""

import pytest

from lit import pipeline
from lit.errors import PipelineError


def _results(*pairs):
    return [pipeline.QueryResult(q, tuple(pipeline.Hit(i + 1, n, 1.0) for i, n in enumerate(names))) for q, names in pairs]


def test_pairs_round_trip(tmp_path):
    pipeline.write_pairs(_results(("q/1.jpg", ["a/1.jpg", "b/2.jpg"])), tmp_path / "p.txt")
    assert pipeline.read_pairs(tmp_path / "p.txt") == [("q/1.jpg", "a/1.jpg"), ("q/1.jpg", "b/2.jpg")]


def test_names_with_spaces_are_refused_and_nothing_is_written(tmp_path):
    with pytest.raises(PipelineError, match="cannot hold names with spaces"):
        pipeline.write_pairs(_results(("my photo.jpg", ["evd-grand/1.jpg"])), tmp_path / "p.txt")
    with pytest.raises(PipelineError, match="spaces"):
        pipeline.write_pairs(_results(("q.jpg", ["a b/1.jpg"])), tmp_path / "p.txt")
    assert not (tmp_path / "p.txt").exists()


def test_reading_skips_comments_and_names_the_bad_line(tmp_path):
    (tmp_path / "p.txt").write_text("# hloc pairs\n\na/1.jpg  b/2.jpg\na church at night photos2/x.jpg\n")
    with pytest.raises(PipelineError, match=r"line 4: expected two names .* got 5 fields"):
        pipeline.read_pairs(tmp_path / "p.txt")
    (tmp_path / "q.txt").write_text("a/1.jpg\tb/2.jpg\n")
    assert pipeline.read_pairs(tmp_path / "q.txt") == [("a/1.jpg", "b/2.jpg")]


def test_hloc_pair_key():
    assert pipeline.pair_key("db/a/1.jpg", "q/2.jpg") == "db-a-1.jpg/q-2.jpg"
