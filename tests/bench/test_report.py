"""How benchmark scripts give their figures: JSON on stdout, and the same in a file."""

import json

from lit.bench import print_report


def test_a_report_is_printed_and_written_as_the_same_json(tmp_path, capsys):
    report = {"map": 61.25, "rows": [1, 2], "name": "caf\u00e9"}
    path = tmp_path / "out.json"
    path.write_text("an older report")
    print_report(report, path, indent=1)
    assert json.loads(capsys.readouterr().out) == report
    assert json.loads(path.read_text()) == report
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]  # replaced in place, no temporary left


def test_a_report_without_a_path_is_only_printed(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    print_report({"a": 1})
    assert capsys.readouterr().out == '{"a": 1}\n' and not list(tmp_path.iterdir())
