"""`lit plot-attention`: options honoured or refused, default output names."""

import shutil

import numpy as np
from PIL import Image


def test_plot_attention_options_are_honoured_or_refused(collection, tmp_path, monkeypatch, cli):
    img = tmp_path / "01.jpg"
    shutil.copy(collection["photos"] / "a" / "1.jpg", img)
    model = collection["models"][0]
    bad = cli("plot-attention", img, "--model", model, "--device", "cpu", "--top", "100", ok=False)
    assert bad.returncode == 2 and "--top 100" in bad.stderr and "1..8" in bad.stderr
    bad = cli("plot-attention", img, "--model", model, "--device", "cpu", "--scales", "1,0.5", ok=False)
    assert bad.returncode == 2 and "--scale" in bad.stderr
    bad = cli("plot-attention", img, "--model", model, "--device", "cpu", "--indices", "3,99", ok=False)
    assert bad.returncode == 2 and "99" in bad.stderr
    # the default output goes to the current folder, named after the image's folder and name
    # (not into the photo folder, where the next extraction would take it for a photo),
    # and never overwrites an earlier one
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    monkeypatch.chdir(out_dir)
    first = cli("plot-attention", img, "--model", model, "--device", "cpu", "--top", "4").stdout
    second = cli("plot-attention", img, "--model", model, "--device", "cpu", "--top", "4").stdout
    assert first.split()[-1] == f"{tmp_path.name}_01_attention.png"
    assert second.split()[-1] == f"{tmp_path.name}_01_attention_2.png"
    assert sorted(p.name for p in tmp_path.glob("*.png")) == []  # nothing written beside the photo
    cli("plot-attention", img, "--model", model, "--device", "cpu", "--top", "4", "--out", tmp_path / "att.svg")
    assert "<svg" in (tmp_path / "att.svg").read_text()
    assert Image.open(out_dir / first.split()[-1]).size[0] > 200
    assert np.asarray(Image.open(out_dir / first.split()[-1]).convert("L")).std() > 10


def test_a_scale_the_model_does_not_extract_is_drawn_with_a_warning(collection, tmp_path, cli):
    img = tmp_path / "01.jpg"
    shutil.copy(collection["photos"] / "a" / "1.jpg", img)
    model = collection["models"][0]
    common = ("plot-attention", img, "--model", model, "--device", "cpu", "--top", "2")
    odd = cli(*common, "--scale", "1.5", "--out", tmp_path / "odd.png")
    assert "warning: --scale 1.5 is outside the scales this model extracts" in odd.stderr
    assert Image.open(tmp_path / "odd.png").size[0] > 100
    usual = cli(*common, "--scale", "1", "--out", tmp_path / "usual.png")
    assert "warning" not in usual.stderr
