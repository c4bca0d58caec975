"""`lit index`, `lit search`, `lit match` and `lit plot-attention` as a user runs them
(in this process, on tiny data): codebook policy, self-contained index, fingerprints, outputs,
plots and option checks."""

import json
import os
import shutil

import numpy as np
import pytest
import torch
from cli_runner import run_lit as run
from PIL import Image

import lit
from lit.models import SuperFeatureModel, save_checkpoint

PHOTOS = os.path.join(os.path.dirname(lit.__file__), "assets", "photos")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Two scenes of two photos (crops of two bundled photos), a tiny model, its features
    and an index built with the defaults; and a second model with other weights."""
    from lit.models import BackboneConfig, LITConfig, ModelConfig, RuntimeConfig

    tmp = tmp_path_factory.mktemp("clipipe")
    cfg = ModelConfig(backbone=BackboneConfig("resnet18", 3), lit=LITConfig(T=2, N=8, dim=32), reduction_dim=16,
                      runtime=RuntimeConfig(image_size=96, features_num=20, scales=(1.0, 0.707, 0.5)))
    paths = {}
    for seed in (0, 1):
        torch.manual_seed(seed)
        paths[seed] = tmp / f"model{seed}.pt"
        save_checkpoint(SuperFeatureModel(cfg).eval(), paths[seed])
    photos = tmp / "photos"
    for scene, src in (("a", "sacre_coeur/sacre_coeur1.jpg"), ("b", "terrace/terrace0.jpg")):
        (photos / scene).mkdir(parents=True)
        img = Image.open(os.path.join(PHOTOS, src)).convert("RGB").resize((160, 120))
        img.crop((0, 0, 140, 110)).save(photos / scene / "1.jpg")
        img.crop((15, 8, 160, 120)).save(photos / scene / "2.jpg")
    feats = tmp / "feats.h5"
    run("extract", photos, "--out", feats, "--model", paths[0], "--device", "cpu", "--quiet")
    index = tmp / "index.h5"
    proc = run("index", feats, "--out", index, "--device", "cpu", "--image-root", photos)
    return {"tmp": tmp, "models": paths, "photos": photos, "feats": feats, "index": index, "index_log": proc}


def test_index_uses_the_codebook_policy_and_warns_on_small_sets(setup):
    from lit.features import FeatureStore
    from lit.pipeline import codebook_size

    with FeatureStore(setup["feats"]) as st:
        n = int(st.h5.attrs["num_features"])
    proc = setup["index_log"]
    assert f"training a codebook of {codebook_size(n)} words on {n} descriptors" in proc.stderr
    assert "warning: the codebook is learned on only" in proc.stderr and "--train-features" in proc.stderr
    assert f"indexed 4 images ({n} descriptors, {codebook_size(n)} words)" in proc.stdout


def test_help_states_the_policies():
    assert "12 x sqrt" in run("index", "--help").stdout
    text = run("search", "--help").stdout
    assert "score" in text and "multiple assignment" in text and "--exclude-self" in text
    text = run("match", "--help").stdout
    assert "calibrated" in text and "background test" in text and "--margin" in text


def test_search_prints_topk_excludes_self_and_one_name_convention(setup, tmp_path):
    # a copy of the index alone, in another folder: names and image root travel inside it
    shutil.copy(setup["index"], tmp_path / "copy.h5")
    out = tmp_path / "r.json"
    pairs = tmp_path / "p.txt"
    proc = run("search", tmp_path / "copy.h5", "--query-features", setup["feats"], "--exclude-self", "--topk", "3",
               "--json", out, "--pairs", pairs, "--verbose", "--device", "cpu")
    data = json.loads(out.read_text())
    assert data["db_root"] == str(setup["photos"])
    for q in data["queries"]:
        names = [h["name"] for h in q["results"]]
        assert len(names) == 3 and q["query"] not in names
    lines = proc.stdout.splitlines()
    assert len(lines) == 4 * (1 + 3)  # every asked result printed
    assert sorted(q["query"] for q in data["queries"]) == ["a/1.jpg", "a/2.jpg", "b/1.jpg", "b/2.jpg"]
    # query images given as a folder: the same names (relative to that folder) and the same results
    run("search", tmp_path / "copy.h5", setup["photos"], "--exclude-self", "--topk", "3", "--model",
        setup["models"][0], "--device", "cpu", "--json", tmp_path / "r2.json")
    data2 = json.loads((tmp_path / "r2.json").read_text())
    assert [q["query"] for q in data2["queries"]] == [q["query"] for q in data["queries"]]
    for q1, q2 in zip(data["queries"], data2["queries"]):
        assert [h["name"] for h in q1["results"]] == [h["name"] for h in q2["results"]]
    for line in pairs.read_text().splitlines():
        qn, dn = line.split()
        assert qn.count("/") == dn.count("/") == 1  # scene/file on both sides
    # without --exclude-self the query itself comes first
    run("search", setup["index"], "--query-features", setup["feats"], "--topk", "1", "--json", out, "--device", "cpu")
    assert all(q["results"][0]["name"] == q["query"] for q in json.loads(out.read_text())["queries"])


def test_search_refuses_queries_of_another_model(setup, tmp_path):
    other = tmp_path / "other.h5"
    run("extract", setup["photos"] / "a", "--out", other, "--model", setup["models"][1], "--device", "cpu", "--quiet")
    bad = run("search", setup["index"], "--query-features", other, "--device", "cpu", ok=False)
    assert bad.returncode == 2 and "another model" in bad.stderr and "--force" in bad.stderr
    assert "Traceback" not in bad.stderr
    bad = run("search", setup["index"], setup["photos"] / "a" / "1.jpg", "--model", setup["models"][1],
              "--device", "cpu", ok=False)
    assert bad.returncode == 2 and "another model" in bad.stderr
    forced = run("search", setup["index"], "--query-features", other, "--device", "cpu", "--force")
    assert "warning" in forced.stderr and "a/1.jpg" in forced.stdout
    bad = run("index", setup["feats"], "--out", tmp_path / "i.h5", "--train-features", other, "--device", "cpu", ok=False)
    assert bad.returncode == 2 and "training features" in bad.stderr


def test_search_plot_one_figure_per_query_from_the_stored_root(setup, tmp_path):
    proc = run("search", setup["index"], "--query-features", setup["feats"], "--exclude-self", "--plot",
               tmp_path / "res.svg", "--query-root", setup["photos"], "--device", "cpu", "--topk", "3")
    figs = sorted(p.name for p in tmp_path.iterdir())
    assert figs == [f"res_{i:03d}.svg" for i in range(1, 5)], proc.stderr
    svg = (tmp_path / "res_001.svg").read_text()
    assert svg.lstrip().startswith("<?xml") and "a/1.jpg" in svg and ("✓" in svg or "✗" in svg)
    # without --image-root the index takes the root the feature file records
    proc = run("index", setup["feats"], "--out", tmp_path / "auto.h5", "--device", "cpu")
    assert f"image root {setup['photos']}" in proc.stdout
    # images no longer where the index says: the message names --db-root
    run("index", setup["feats"], "--out", tmp_path / "moved.h5", "--device", "cpu", "--image-root", tmp_path / "gone")
    bad = run("search", tmp_path / "moved.h5", "--query-features", setup["feats"], "--query-root", setup["photos"],
              "--plot", tmp_path / "x.png", "--device", "cpu", ok=False)
    assert bad.returncode == 2 and "--db-root" in bad.stderr and "Traceback" not in bad.stderr


def test_match_default_threshold_is_the_models(setup, tmp_path):
    a, b = setup["photos"] / "a" / "1.jpg", setup["photos"] / "a" / "2.jpg"
    proc = run("match", a, b, "--model", setup["models"][0], "--device", "cpu", "--json", tmp_path / "m.json")
    assert "cosine >= 0.9 (the model's rule)" in proc.stdout and "score" in proc.stdout
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["threshold"] == 0.9 and m["margin"] is None
    proc = run("match", a, b, "--model", setup["models"][0], "--device", "cpu", "--threshold", "0.2",
               "--json", tmp_path / "m.json")
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["threshold"] == 0.2 and all(s >= 0.2 for s in m["similarity"])
    assert abs(m["score"] - sum(m["similarity"])) < 1e-4
    bad = run("match", a, b, "--model", setup["models"][0], "--device", "cpu", "--margin", "0.1", ok=False)
    assert bad.returncode == 2 and "no match background" in bad.stderr and "Traceback" not in bad.stderr
    bad = run("match", a, b, "--model", setup["models"][0], "--device", "cpu", "--threshold", "high", ok=False)
    assert bad.returncode == 2 and "--threshold must be a number or none" in bad.stderr


def test_match_default_rule_with_a_background_comes_from_the_model_file(setup, tmp_path):
    """A model whose weights file carries a match background (like lit-effl0): `lit match`
    without options applies its background test; the matches equal a numpy computation of
    the rule."""
    from lit.matching import MatchRule

    ckpt = setup["models"][0]
    model = lit.load_model(ckpt)
    size = model.cfg.runtime.image_size
    bg = model.extract(lit.load_image(setup["photos"] / "b" / "1.jpg", size)).descriptors.numpy()
    np.savez(tmp_path / "bg.npz", descriptors=bg.astype(np.float16))
    a, b = setup["photos"] / "a" / "1.jpg", setup["photos"] / "a" / "2.jpg"
    # the rule in numpy: reciprocal nearest neighbours whose cosine beats by the margin the
    # best cosine of either super-feature to the background (float16 as stored)
    fa = model.extract(lit.load_image(a, size)).descriptors.double().numpy()
    fb = model.extract(lit.load_image(b, size)).descriptors.double().numpy()
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    ua, ub, ug = unit(fa), unit(fb), unit(bg.astype(np.float16).astype(np.float64))
    s = ua @ ub.T
    nab, nba = s.argmax(1), s.argmax(0)
    recip = [i for i in range(len(ua)) if nba[nab[i]] == i]
    best_a, best_b = (ua @ ug.T).max(1), (ub @ ug.T).max(1)
    excess = {i: s[i, nab[i]] - max(best_a[i], best_b[nab[i]]) for i in recip}
    ordered = sorted(excess.values())
    assert len(ordered) >= 2
    k = len(ordered) // 2
    margin = float((ordered[k - 1] + ordered[k]) / 2)  # between two pairs: half of them pass
    expected = sorted(i for i in recip if excess[i] >= margin)
    assert 0 < len(expected) < len(recip)
    bank = torch.from_numpy(bg.astype(np.float16).astype(np.float32))
    model.set_match_rule(MatchRule(threshold=None, margin=margin, background=bank))
    tuned = tmp_path / "tiny-bg.safetensors"
    save_checkpoint(model, tuned)
    proc = run("match", a, b, "--model", tuned, "--device", "cpu", "--json", tmp_path / "m.json")
    assert f"best background cosine + {margin:g}" in proc.stdout and "(the model's rule)" in proc.stdout
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["threshold"] is None and m["margin"] == margin
    assert sorted(m["indices_a"]) == expected
    # --margin none: the plain reciprocal-neighbour rule (no floor: every reciprocal pair)
    run("match", a, b, "--model", tuned, "--device", "cpu", "--margin", "none", "--json", tmp_path / "m2.json")
    assert json.loads((tmp_path / "m2.json").read_text())["matches"] == len(recip)


def test_plot_attention_options_are_honoured_or_refused(setup, tmp_path, monkeypatch):
    img = tmp_path / "01.jpg"
    shutil.copy(setup["photos"] / "a" / "1.jpg", img)
    model = setup["models"][0]
    bad = run("plot-attention", img, "--model", model, "--device", "cpu", "--top", "100", ok=False)
    assert bad.returncode == 2 and "--top 100" in bad.stderr and "1..8" in bad.stderr
    bad = run("plot-attention", img, "--model", model, "--device", "cpu", "--scales", "1,0.5", ok=False)
    assert bad.returncode == 2 and "--scale" in bad.stderr
    bad = run("plot-attention", img, "--model", model, "--device", "cpu", "--indices", "3,99", ok=False)
    assert bad.returncode == 2 and "99" in bad.stderr
    # the default output goes to the current folder, named after the image's folder and name
    # (not into the photo folder, where the next extraction would take it for a photo),
    # and never overwrites an earlier one
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    monkeypatch.chdir(out_dir)
    first = run("plot-attention", img, "--model", model, "--device", "cpu", "--top", "4").stdout
    second = run("plot-attention", img, "--model", model, "--device", "cpu", "--top", "4").stdout
    assert first.split()[-1] == f"{tmp_path.name}_01_attention.png"
    assert second.split()[-1] == f"{tmp_path.name}_01_attention_2.png"
    assert sorted(p.name for p in tmp_path.glob("*.png")) == []  # nothing written beside the photo
    run("plot-attention", img, "--model", model, "--device", "cpu", "--top", "4", "--out", tmp_path / "att.svg")
    assert "<svg" in (tmp_path / "att.svg").read_text()
    assert Image.open(out_dir / first.split()[-1]).size[0] > 200
    assert np.asarray(Image.open(out_dir / first.split()[-1]).convert("L")).std() > 10
