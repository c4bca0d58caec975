"""`lit search` says which files it wrote and lists only images that share a visual word."""

import json
import os
import subprocess
import sys

import numpy as np
import torch

from lit import pipeline
from lit.features import FeatureStore
from lit.index_file import write_index
from lit.types import LocalFeatures


def test_written_files_are_named_and_unscored_images_left_out(tmp_path):
    rng = np.random.default_rng(0)
    with FeatureStore(tmp_path / "f.h5", "a", descriptor_dim=8, fingerprint="fp", root=str(tmp_path)) as st:
        for name, centre in (("a/1.jpg", 5.0), ("a/2.jpg", 5.0), ("b/1.jpg", -5.0), ("b/2.jpg", -5.0)):
            x = torch.from_numpy(rng.normal(size=(30, 8)).astype(np.float32) + centre)
            st.append(name, LocalFeatures(x, torch.ones(30), torch.ones(30), torch.arange(30), torch.zeros(30, 2)))
    index, info = pipeline.build_index(tmp_path / "f.h5", size=16, seed=0)
    write_index(tmp_path / "i.h5", index, info)
    args = [sys.executable, "-m", "lit", "search", str(tmp_path / "i.h5"), "--query-features", str(tmp_path / "f.h5"),
            "--exclude-self", "--device", "cpu", "--json", str(tmp_path / "r.json")]
    out = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert f"wrote {tmp_path / 'r.json'} (4 queries, 4 results)" in out.stderr
    first = json.loads((tmp_path / "r.json").read_text())["queries"][0]
    assert [h["name"] for h in first["results"]] == ["a/2.jpg"]
    out = subprocess.run(args + ["--keep-unscored"], capture_output=True, text=True, timeout=300)
    assert len(json.loads((tmp_path / "r.json").read_text())["queries"][0]["results"]) == 3


def test_printed_results_are_one_line_each_with_names_escaped(tmp_path, cli):
    """A Latin-1 name, a name with a newline and one with a terminal escape: the console gets
    valid UTF-8, one line per query and per result, as ``lit.display_name`` shows them."""
    rng = np.random.default_rng(0)
    names = [os.fsdecode(b"a/caf\xe9.jpg"), "a/two\nlines.jpg", "a/\x1b[2Jclear.jpg", "b/1.jpg"]
    with FeatureStore(tmp_path / "f.h5", "a", descriptor_dim=8, fingerprint="fp", root=str(tmp_path)) as st:
        for name in names:
            x = torch.from_numpy(rng.normal(size=(30, 8)).astype(np.float32) + (5.0 if name[0] == "a" else -5.0))
            st.append(name, LocalFeatures(x, torch.ones(30), torch.ones(30), torch.arange(30), torch.zeros(30, 2)))
    index, info = pipeline.build_index(tmp_path / "f.h5", size=16, seed=0)
    write_index(tmp_path / "i.h5", index, info)
    out = cli("search", tmp_path / "i.h5", "--query-features", tmp_path / "f.h5", "--exclude-self", "--device", "cpu",
              "--topk", "2").stdout
    out.encode("utf-8")  # no lone surrogates: printable on any UTF-8 console, and valid in a pipe
    lines = out.splitlines()
    assert "\x1b" not in out and lines[0] == "a/caf\\xe9.jpg"
    queries = [line for line in lines if not line.startswith("  ")]
    assert queries == ["a/caf\\xe9.jpg", "a/two\\nlines.jpg", "a/\\x1b[2Jclear.jpg", "b/1.jpg"]
    results = [line.split()[-1] for line in lines if line.startswith("  ")]
    assert set(results[:2]) == {"a/two\\nlines.jpg", "a/\\x1b[2Jclear.jpg"}
