"""`lit demo` runs offline and draws its figures."""

import pytest
from PIL import Image


@pytest.mark.slow
def test_demo_runs_offline(tmp_path, cli):
    proc = cli("demo", "--out", tmp_path / "figs", "--device", "cpu")
    assert "mAP over 12 queries" in proc.stdout
    for name in ("demo_attention.png", "demo_matches.png", "demo_retrieval.png"):
        assert Image.open(tmp_path / "figs" / name).size[0] > 300
