"""`lit match` (and `lit plot-attention` of the matched photo): outputs, the model's own rule, the shipped model on the Sacre-Coeur photos."""

import json
import os

import numpy as np
import torch
from paths import PHOTOS
from PIL import Image

import lit
from lit.models import save_checkpoint


def test_match_and_plots(tmp_path, ckpt, cli):
    a = os.path.join(PHOTOS, "sacre_coeur", "sacre_coeur1.jpg")
    b = os.path.join(PHOTOS, "sacre_coeur", "sacre_coeur2.jpg")
    out_png, out_json = tmp_path / "m.png", tmp_path / "m.json"
    proc = cli("match", a, b, "--model", ckpt, "--device", "cpu", "--threshold", "0.5", "--plot", out_png, "--json", out_json)
    assert "matches" in proc.stdout
    m = json.loads(out_json.read_text())
    assert m["matches"] == len(m["indices_a"]) == len(m["positions_b"])
    assert all(s >= 0.5 for s in m["similarity"])
    img = Image.open(out_png)
    assert img.size[0] > 400 and len(np.unique(np.asarray(img.convert("L")))) > 10
    att = tmp_path / "att.pdf"
    cli("plot-attention", a, "--model", ckpt, "--device", "cpu", "--top", "4", "--out", att)
    assert att.read_bytes()[:4] == b"%PDF"


def test_default_model_matches_sacre_coeur_on_the_building(tmp_path, cli):
    """The shipped lit-effl0 (the default model) under its own calibrated rule (no
    --threshold / --margin: the background test): the day and night Sacre-Coeur photos
    share super-features, and they lie on the building. Boxes drawn by hand around the building (basilica and towers, no sky, no
    square) in the 512-px images the model sees."""
    a = os.path.join(PHOTOS, "sacre_coeur", "sacre_coeur1.jpg")  # 512 x 366 at runtime size
    b = os.path.join(PHOTOS, "sacre_coeur", "sacre_coeur2.jpg")  # 384 x 512
    out = tmp_path / "m.json"
    cli("match", a, b, "--device", "cpu", "--json", out)
    m = json.loads(out.read_text())
    rule = lit.load_model("lit-effl0").match_rule()  # the rule in its weights file
    assert m["threshold"] == rule.threshold and m["margin"] == rule.margin and m["matches"] >= 1
    for (xa, ya), (xb, yb) in zip(m["positions_a"], m["positions_b"]):
        assert 60 <= xa <= 430 and 30 <= ya <= 320, (xa, ya)
        assert 30 <= xb <= 384 and 80 <= yb <= 370, (xb, yb)


def test_match_default_threshold_is_the_models(collection, tmp_path, cli):
    a, b = collection["photos"] / "a" / "1.jpg", collection["photos"] / "a" / "2.jpg"
    proc = cli("match", a, b, "--model", collection["models"][0], "--device", "cpu", "--json", tmp_path / "m.json")
    assert "cosine >= 0.9 (the model's rule)" in proc.stdout and "score" in proc.stdout
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["threshold"] == 0.9 and m["margin"] is None
    proc = cli("match", a, b, "--model", collection["models"][0], "--device", "cpu", "--threshold", "0.2",
               "--json", tmp_path / "m.json")
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["threshold"] == 0.2 and all(s >= 0.2 for s in m["similarity"])
    assert abs(m["score"] - sum(m["similarity"])) < 1e-4
    bad = cli("match", a, b, "--model", collection["models"][0], "--device", "cpu", "--margin", "0.1", ok=False)
    assert bad.returncode == 2 and "no match background" in bad.stderr and "Traceback" not in bad.stderr
    bad = cli("match", a, b, "--model", collection["models"][0], "--device", "cpu", "--threshold", "high", ok=False)
    assert bad.returncode == 2 and "--threshold must be a number or none" in bad.stderr


def test_match_default_rule_with_a_background_comes_from_the_model_file(collection, tmp_path, cli):
    """A model whose weights file carries a match background (like lit-effl0): `lit match`
    without options applies its background test; the matches equal a numpy computation of
    the rule."""
    from lit.matching import MatchRule

    ckpt = collection["models"][0]
    model = lit.load_model(ckpt)
    size = model.cfg.runtime.image_size
    bg = model.extract(lit.load_image(collection["photos"] / "b" / "1.jpg", size)).descriptors.numpy()
    np.savez(tmp_path / "bg.npz", descriptors=bg.astype(np.float16))
    a, b = collection["photos"] / "a" / "1.jpg", collection["photos"] / "a" / "2.jpg"
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
    proc = cli("match", a, b, "--model", tuned, "--device", "cpu", "--json", tmp_path / "m.json")
    assert f"best background cosine + {margin:g}" in proc.stdout and "(the model's rule)" in proc.stdout
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["threshold"] is None and m["margin"] == margin
    assert sorted(m["indices_a"]) == expected
    # --margin none: the plain reciprocal-neighbour rule (no floor: every reciprocal pair)
    cli("match", a, b, "--model", tuned, "--device", "cpu", "--margin", "none", "--json", tmp_path / "m2.json")
    assert json.loads((tmp_path / "m2.json").read_text())["matches"] == len(recip)
