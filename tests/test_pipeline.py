"""lit.pipeline: codebook policy, self-contained index, fingerprints, search and outputs."""

import csv
import dataclasses
import json
import math
import os
import shutil

import h5py
import numpy as np
import pytest
import torch

from lit import pipeline
from lit.asmk import ASMK
from lit.errors import IndexFileError
from lit.features import FeatureStore
from lit.index_file import load_index, write_index
from lit.types import LocalFeatures

BAD_NAME = os.fsdecode(b"scene_b/caf\xe9.jpg")  # not valid UTF-8: a surrogate-escaped str


def _feats(rng, k=40, d=8, centre=None):
    x = rng.normal(size=(k, d)).astype(np.float32)
    if centre is not None:
        x += centre
    return LocalFeatures(descriptors=torch.from_numpy(x), strengths=torch.ones(k), scales=torch.ones(k),
                         superfeature_ids=torch.arange(k), positions=torch.zeros(k, 2))


def _feature_file(path, fingerprint="fp-a", names=("scene_a/1.jpg", "scene_a/2.jpg", "scene_b/1.jpg", "scene_b/2.jpg"),
                  seed=0):
    """A feature file whose scene_a images share a descriptor centre, and scene_b another."""
    rng = np.random.default_rng(seed)
    centres = {"scene_a": np.full(8, 3.0, np.float32), "scene_b": np.full(8, -3.0, np.float32)}
    feats = []
    with FeatureStore(path, "a", descriptor_dim=8, fingerprint=fingerprint) as st:
        for n in names:
            f = _feats(rng, centre=centres[n.split("/")[0]])
            st.append(n, f)
            feats.append(f)
    return feats


def test_codebook_size_is_sixteen_square_roots_capped():
    assert pipeline.codebook_size(5120) == round(12 * math.sqrt(5120)) == 859
    assert pipeline.codebook_size(10**9) == 65536
    assert pipeline.codebook_size(30_000_000) == 65536 and pipeline.codebook_size(20_000_000) == 53666
    assert pipeline.codebook_size(100) == 50  # at least two descriptors per word (12 x 10 = 120)
    assert pipeline.codebook_size(10) == 8 and pipeline.codebook_size(3) == 3  # room for multiple assignment
    with pytest.raises(ValueError):
        pipeline.codebook_size(0)


def test_small_set_warning_names_train_features():
    assert "--train-features" in pipeline.small_set_warning(5000, 20)
    assert pipeline.small_set_warning(200_000, 1000) is None


def test_index_file_is_self_contained(tmp_path):
    feats = tmp_path / "f.h5"
    _feature_file(feats)
    index, info = pipeline.build_index(feats, size=8, image_root=tmp_path / "photos")
    info = dataclasses.replace(info, names=info.names[:3] + (BAD_NAME,))  # bytes that are not UTF-8 survive
    out = tmp_path / "i.h5"
    write_index(out, index, info)
    # copy the index alone somewhere else, and remove the feature file
    other = tmp_path / "elsewhere"
    other.mkdir()
    shutil.copy(out, other / "i.h5")
    feats.unlink()
    index2, info2 = load_index(other / "i.h5")
    assert info2 == info
    assert info2.names[3] == BAD_NAME and os.fsencode(info2.names[3]) == b"scene_b/caf\xe9.jpg"
    assert info2.image_root == str(tmp_path / "photos") and info2.fingerprint == "fp-a"
    assert info2.codebook_size == 8 and info2.descriptors == 160
    np.testing.assert_array_equal(index2.codebook.numpy(), index.codebook.numpy())
    with h5py.File(other / "i.h5") as f:
        assert "pipeline" in f and f["pipeline"].attrs["format"] == "lit-index-pipeline"


def test_old_index_with_sidecar_still_loads_with_a_note(tmp_path, caplog):
    index = ASMK(np.random.default_rng(0).normal(size=(8, 8)).astype(np.float32))
    index.add(np.ones((3, 8), np.float32), np.array([0, 1, 1]))
    index.save(tmp_path / "old.h5")
    (tmp_path / "old.h5.names.json").write_text(json.dumps({"features": "f.h5", "names": ["a.jpg", "b.jpg"]}))
    with caplog.at_level("INFO", logger="lit"):
        _, info = load_index(tmp_path / "old.h5")
    assert info.names == ("a.jpg", "b.jpg") and info.legacy and info.fingerprint is None
    assert "older lit" in caplog.text
    (tmp_path / "old.h5.names.json").unlink()
    with pytest.raises(IndexFileError, match="without image names"):
        load_index(tmp_path / "old.h5")


def test_fingerprint_check_refuses_or_warns(caplog):
    pipeline.check_fingerprint("abc", "abc", "queries", "index.h5")
    pipeline.check_fingerprint("abc", None, "queries", "index.h5")  # unknown: not checked
    with pytest.raises(pipeline.FingerprintError, match="another model.*force=True") as err:
        pipeline.check_fingerprint("abc", "xyz", "queries", "index.h5")
    assert "--force" in err.value.cli and "--model" in err.value.cli  # the command line's wording
    with caplog.at_level("WARNING", logger="lit"):
        pipeline.check_fingerprint("abc", "xyz", "queries", "index.h5", force=True)
    assert [r.levelname for r in caplog.records] == ["WARNING"] and "going on (--force)" in caplog.text


def test_train_features_of_another_model_are_refused(tmp_path):
    _feature_file(tmp_path / "a.h5", "fp-a")
    _feature_file(tmp_path / "b.h5", "fp-b", seed=1)
    with pytest.raises(pipeline.FingerprintError, match="training features"):
        pipeline.build_index(tmp_path / "a.h5", size=8, train_features=tmp_path / "b.h5")
    index, info = pipeline.build_index(tmp_path / "a.h5", size=8, train_features=tmp_path / "b.h5", force=True)
    assert info.codebook_source.endswith("b.h5") and info.codebook_descriptors == 160


def test_search_matches_the_index_and_excludes_self(tmp_path):
    feats = _feature_file(tmp_path / "f.h5")
    index, info = pipeline.build_index(tmp_path / "f.h5", size=8)
    res = pipeline.search(index, info, feats, list(info.names), topk=None)
    ranks, scores = index.search(torch.cat([f.descriptors for f in feats]),
                                 np.repeat(np.arange(4), 40), topk=None)
    for q, r in enumerate(res):
        assert [h.name for h in r.hits] == [info.names[i] for i in ranks[q].tolist()]
        np.testing.assert_allclose([h.score for h in r.hits], scores[q].numpy(), rtol=1e-6)
    ex = pipeline.search(index, info, feats, list(info.names), topk=2, exclude_self=True)
    for q, r in enumerate(ex):
        assert len(r.hits) == 2 and info.names[q] not in [h.name for h in r.hits]
        assert [h.rank for h in r.hits] == [1, 2]
    # scene_a/1.jpg: the other scene_a photo is the best result once itself is left out
    assert ex[0].hits[0].name == "scene_a/2.jpg"


def test_exclude_self_by_real_path_when_roots_are_known(tmp_path):
    feats = _feature_file(tmp_path / "f.h5")
    index, info = pipeline.build_index(tmp_path / "f.h5", size=8, image_root=tmp_path / "db")
    # the same image named from another root: db/scene_a/1.jpg == ./db/scene_a/1.jpg
    res = pipeline.search(index, info, feats[:1], ["db/scene_a/1.jpg"], topk=None, exclude_self=True,
                          query_root=str(tmp_path))
    assert "scene_a/1.jpg" not in [h.name for h in res[0].hits] and len(res[0].hits) == 3


def test_outputs_share_one_name_convention_and_keep_bytes(tmp_path):
    feats = _feature_file(tmp_path / "f.h5")
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
    assert pipeline.scene_of("a/b/c.jpg") == "a" and pipeline.scene_of("c.jpg") is None


def test_registry_rule_is_the_models(tiny_model, tmp_path):
    import lit
    from lit._resources import weights_file

    rule = tiny_model.match_rule()  # a model without a rule of its own: FIRe's 0.9, no background
    assert rule.threshold == 0.9 and rule.margin is None and rule.background is None
    # lit-effl0's background test travels in its weights file (provenance of the bank:
    # tests/models/test_checkpoint.py::test_shipped_lit_effl0_carries_its_calibrated_rule)
    shipped = weights_file("lit-effl0.safetensors")
    bank = lit.load_model("lit-effl0").match_background
    for model in (lit.load_model("lit-effl0"), lit.load_model(shipped)):  # by name, by path
        rule = model.match_rule()
        assert rule.threshold is None and 0 < rule.margin < 0.3
        assert torch.equal(rule.background, bank)
        assert "background" in rule.describe() and f"+ {rule.margin:g}" in rule.describe()
        plain = model.match_rule(threshold=0.9, margin=None)
        assert plain.background is None and plain.threshold == 0.9
    shutil.copy(shipped, tmp_path / "renamed.safetensors")  # a copy (or a fine-tuned file) keeps the rule
    assert torch.equal(lit.load_model(tmp_path / "renamed.safetensors").match_rule().background, bank)
    with pytest.raises(ValueError, match="no match background"):
        tiny_model.match_rule(margin=0.1)


def test_model_match_uses_its_rule(tiny_model, monkeypatch):
    import lit
    from lit.matching import MatchRule

    img_a, img_b = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(0)), torch.rand(3, 64, 64)
    tiny_model.set_match_rule(MatchRule(threshold=0.3))
    fa, fb, m = tiny_model.match(img_a, img_b)
    expected = lit.match(fa, fb, threshold=0.3)
    assert torch.equal(m.indices_a, expected.indices_a) and len(m) == len(expected)
    assert bool((m.similarity >= 0.3).all())
    with pytest.raises(ValueError):
        tiny_model.match(img_a, img_b, threshold="fire")
    # a background rule: the features of a third image are the background
    bg = tiny_model.extract(torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(5))).descriptors
    tiny_model.set_match_rule(MatchRule(threshold=None, margin=-0.05, background=bg))
    fa, fb, m = tiny_model.match(img_a, img_b)
    expected = lit.match(fa, fb, threshold=None, background=bg, margin=-0.05)
    assert torch.equal(m.indices_a, expected.indices_a) and torch.equal(m.indices_b, expected.indices_b)
    # image a as its own background: each of its super-features has cosine 1 to it, so no
    # pair beats the background by a margin of 0.001
    tiny_model.set_match_rule(MatchRule(threshold=None, margin=0.001, background=fa.descriptors))
    assert len(lit.match(fa, fb, threshold=None)) > 0 and len(tiny_model.match(img_a, img_b)[2]) == 0


def test_quantisation_error_against_a_loop():
    rng = np.random.default_rng(0)
    x, cb = rng.normal(size=(50, 4)).astype(np.float32), rng.normal(size=(6, 4)).astype(np.float32)
    expected = np.mean([min(((xi - c) ** 2).sum() for c in cb) for xi in x])
    assert pipeline.quantisation_error(torch.from_numpy(x), torch.from_numpy(cb), chunk=7) == pytest.approx(expected, rel=1e-5)


def test_small_sets_keep_the_best_of_several_kmeans_runs():
    from lit.asmk import ASMK

    assert pipeline.kmeans_restarts(5000) == 4 and pipeline.kmeans_restarts(10**6) == 1
    x = torch.from_numpy(np.random.default_rng(1).normal(size=(400, 8)).astype(np.float32))
    best = pipeline.train_codebook(x, 20, seed=1, restarts=3)
    errs = [pipeline.quantisation_error(x, ASMK.train(x, size=20, seed=3 + r).codebook) for r in range(3)]
    assert pipeline.quantisation_error(x, best) == pytest.approx(min(errs), rel=1e-6)


def test_codebook_is_deterministic_for_a_seed():
    x = torch.from_numpy(np.random.default_rng(3).normal(size=(600, 8)).astype(np.float32))
    a = pipeline.train_codebook(x, 30, seed=2)
    b = pipeline.train_codebook(x, 30, seed=2)
    assert a.shape == (30, 8) and torch.equal(a, b)  # same seed, same codebook (the CLI's --seed)
    assert not torch.equal(a, pipeline.train_codebook(x, 30, seed=3))
