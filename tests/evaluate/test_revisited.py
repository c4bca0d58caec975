"""lit.evaluate.revisited: the Revisited Oxford/Paris protocol, the classic protocol and safe ground-truth loading."""

import os
import pickle

import numpy as np
import pytest
from paths import GND_DIR
from pickle_payloads import ExecPayload, PartialPayload, SystemPayload

from lit._pickle import UnsafePickleError
from lit.evaluate import (
    classic_map,
    compute_ap,
    format_table,
    load_ground_truth,
    revisited_map,
)

KAPPAS = (1, 5, 10)


# --------------------------------------------------------------------------- a literal reference
def reference_scores(ranking, positives, ignored, kappas):
    """SPEC section 4 written out literally, one query at a time (None when no positive)."""
    positives, ignored = set(positives), set(ignored)
    if not positives:
        return None, None
    kept = [x for x in ranking if x not in ignored]
    found = [r for r, x in enumerate(kept) if x in positives]
    ap = 0.0
    for j, r in enumerate(found):
        p0 = 1.0 if r == 0 else j / r
        p1 = (j + 1) / (r + 1)
        ap += (p0 + p1) / 2 / len(positives)
    precisions = []
    for k in kappas:
        if not found:
            precisions.append(0.0)
            continue
        ranks1 = [r + 1 for r in found]
        kq = min(max(ranks1), k)
        precisions.append(sum(1 for r in ranks1 if r <= kq) / kq)
    return ap, precisions


def reference_revisited(ranks, gnd, kappas):
    protocols = {
        "easy": (lambda g: g["easy"], lambda g: g["junk"] + g["hard"]),
        "medium": (lambda g: g["easy"] + g["hard"], lambda g: g["junk"]),
        "hard": (lambda g: g["hard"], lambda g: g["junk"] + g["easy"]),
    }
    out = {}
    for name, (pos, ign) in protocols.items():
        aps, prs = [], []
        for i, g in enumerate(gnd):
            ap, pr = reference_scores(list(ranks[:, i]), pos(g), ign(g), kappas)
            aps.append(np.nan if ap is None else ap)
            if pr is not None:
                prs.append(pr)
        valid = [a for a in aps if not np.isnan(a)]
        out[name] = {
            "map": sum(valid) / len(valid) if valid else np.nan,
            "mp@k": [sum(p[j] for p in prs) / len(prs) for j in range(len(kappas))] if prs else None,
            "aps": np.array(aps),
        }
    return out


def random_gnd(rng, n_db, n_q):
    gnd = []
    for q in range(n_q):
        labels = rng.choice(4, size=n_db, p=[0.6, 0.15, 0.15, 0.1])  # neg, easy, hard, junk
        if q % 5 == 1:
            labels[labels == 2] = 0  # no hard positive: left out of Hard
        if q % 7 == 3:
            labels[labels == 1] = 3  # no easy positive: left out of Easy
        gnd.append({
            "bbx": [0.0, 0.0, 10.0, 10.0],
            "easy": np.flatnonzero(labels == 1).tolist(),
            "hard": np.flatnonzero(labels == 2).tolist(),
            "junk": np.flatnonzero(labels == 3).tolist(),
        })
    return gnd


def assert_matches_reference(res, ref):
    for p in ("easy", "medium", "hard"):
        np.testing.assert_allclose(res[p]["aps"], ref[p]["aps"], atol=1e-9, rtol=0, equal_nan=True)
        assert res[p]["map"] == pytest.approx(ref[p]["map"], abs=1e-9)
        np.testing.assert_allclose(res[p]["mp@k"], ref[p]["mp@k"], atol=1e-9, rtol=0)


@pytest.mark.parametrize("seed", range(5))
def test_revisited_map_matches_literal_reference_on_random_rankings(seed):
    rng = np.random.default_rng(seed)
    n_db, n_q = 80, 15
    gnd = random_gnd(rng, n_db, n_q)
    ranks = np.stack([rng.permutation(n_db) for _ in range(n_q)], axis=1)
    res = revisited_map(ranks, gnd, kappas=KAPPAS)
    assert_matches_reference(res, reference_revisited(ranks, gnd, KAPPAS))
    assert np.isnan(res["hard"]["aps"][1]) and np.isnan(res["easy"]["aps"][3])


def test_revisited_map_matches_reference_on_the_real_oxford_ground_truth():
    cfg = load_ground_truth(os.path.join(GND_DIR, "gnd_roxford5k.pkl"))
    rng = np.random.default_rng(0)
    n_db = len(cfg["imlist"])
    cols = []
    for g in cfg["gnd"]:  # a plausible ranking: relevant images pushed towards the top
        score = rng.random(n_db)
        score[g["easy"]] += 0.6
        score[g["hard"]] += 0.3
        score[g["junk"]] += 0.4
        cols.append(np.argsort(-score))
    ranks = np.stack(cols, axis=1)
    res = revisited_map(ranks, cfg["gnd"], kappas=(1, 5, 10))
    ref = reference_revisited(ranks, cfg["gnd"], (1, 5, 10))
    assert_matches_reference(res, ref)
    assert 0.2 < res["medium"]["map"] < 1.0


def test_hand_computed_ap_with_one_junk_image():
    # ranking 0 1 2 3 4: positives 0 and 3, junk 2 -> after dropping the junk the
    # positives are at 0-based ranks 0 and 2: AP = ((1 + 1)/2 + (1/2 + 2/3)/2) / 2
    gnd = [{"bbx": None, "easy": [0, 3], "hard": [], "junk": [2]}]
    ranks = np.arange(5)[:, None]
    res = revisited_map(ranks, gnd, kappas=(1, 2, 5, 10))
    expected = (1.0 + (0.5 + 2 / 3) / 2) / 2
    assert res["easy"]["map"] == pytest.approx(expected, abs=1e-12)
    assert res["medium"]["map"] == pytest.approx(expected, abs=1e-12)
    assert compute_ap([0, 2], 2) == pytest.approx(expected, abs=1e-12)
    # 1-based positive ranks 1 and 3: P@1 = 1, P@2 = 1/2, P@5 -> k' = 3 -> 2/3
    assert res["medium"]["mp@k"] == pytest.approx([1.0, 0.5, 2 / 3, 2 / 3])
    # no hard positive: Hard has no query to average
    assert np.isnan(res["hard"]["map"]) and np.isnan(res["hard"]["aps"][0])


def test_hand_computed_protocols_differ_by_what_they_ignore():
    # ranking: 0 hard, 1 negative, 2 easy, 3 junk, 4 easy
    gnd = [{"bbx": None, "easy": [2, 4], "hard": [0], "junk": [3]}]
    ranks = np.arange(5)[:, None]
    res = revisited_map(ranks, gnd)
    # easy: hard 0 and junk 3 dropped -> [1, 2, 4]: positives at 1, 2
    assert res["easy"]["map"] == pytest.approx(((0 + 1 / 2) / 2 + (1 / 2 + 2 / 3) / 2) / 2)
    # medium: junk dropped -> [0, 1, 2, 4]: positives at 0, 2, 3
    assert res["medium"]["map"] == pytest.approx((1 + (1 / 2 + 2 / 3) / 2 + (2 / 3 + 3 / 4) / 2) / 3)
    # hard: easy and junk dropped -> [0, 1]: positive at 0
    assert res["hard"]["map"] == pytest.approx(1.0)
    assert res["hard"]["mp@k"] == pytest.approx([1.0, 1.0, 1.0])  # k' = min(1, k) = 1


def test_queries_without_positives_are_left_out_of_the_mean():
    gnd = [
        {"bbx": None, "easy": [0], "hard": [], "junk": []},     # perfect, no hard
        {"bbx": None, "easy": [], "hard": [1], "junk": []},     # no easy; hard at rank 1
    ]
    ranks = np.array([[0, 0], [1, 1], [2, 2]])
    res = revisited_map(ranks, gnd)
    ap_q1 = ((0 / 1) + (1 / 2)) / 2  # single positive at rank 1
    assert res["easy"]["aps"][0] == 1.0 and np.isnan(res["easy"]["aps"][1])
    assert res["easy"]["map"] == 1.0
    assert np.isnan(res["hard"]["aps"][0])
    assert res["hard"]["map"] == pytest.approx(ap_q1)
    assert res["medium"]["map"] == pytest.approx((1.0 + ap_q1) / 2)


def test_mp_at_k_uses_the_rank_of_the_last_positive_when_smaller_than_k():
    # a single positive at 1-based rank 3: P@10 uses k' = 3 -> 1/3; P@1 -> 0
    gnd = [{"bbx": None, "easy": [7], "hard": [], "junk": []}]
    ranks = np.array([5, 6, 7, 0, 1, 2, 3, 4])[:, None]
    res = revisited_map(ranks, gnd, kappas=(1, 5, 10))
    assert res["easy"]["mp@k"] == pytest.approx([0.0, 1 / 3, 1 / 3])


def test_truncated_rankings_count_missing_positives_as_not_retrieved():
    gnd = [{"bbx": None, "easy": [0, 9], "hard": [], "junk": []}]
    full = np.arange(10)[:, None]
    res = revisited_map(full[:3], gnd)
    assert res["easy"]["map"] == pytest.approx(0.5)  # one of two positives, at rank 0
    res_none = revisited_map(full[1:3], gnd)
    assert res_none["easy"]["map"] == 0.0 and res_none["easy"]["mp@k"] == [0.0, 0.0, 0.0]


def test_perfect_rankings_on_the_real_ground_truth_score_one():
    for name, n_images in (("roxford5k", 4993), ("rparis6k", 6322)):
        cfg = load_ground_truth(os.path.join(GND_DIR, f"gnd_{name}.pkl"))
        cols = []
        for g in cfg["gnd"]:
            first = list(g["easy"]) + list(g["hard"]) + list(g["junk"])
            rest = np.setdiff1d(np.arange(n_images), first)
            cols.append(np.concatenate([first, rest]))
        res = revisited_map(np.stack(cols, 1), cfg["gnd"])
        for p in ("easy", "medium", "hard"):
            assert res[p]["map"] == pytest.approx(1.0)
            assert res[p]["mp@k"] == pytest.approx([1.0, 1.0, 1.0])
        table = format_table({name: res})
        assert "100.00" in table and name in table and "Medium" in table


def test_ranks_are_validated():
    gnd = [{"bbx": None, "easy": [0], "hard": [], "junk": []}] * 3
    with pytest.raises(ValueError, match="transpose"):
        revisited_map(np.zeros((3, 5), dtype=int), gnd)
    with pytest.raises(TypeError, match="integer"):
        revisited_map(np.zeros((5, 3)), gnd)
    with pytest.raises(ValueError, match="2-D"):
        revisited_map(np.zeros(5, dtype=int), gnd)
    with pytest.raises(ValueError, match="non-negative"):
        revisited_map(-np.ones((5, 3), dtype=int), gnd)
    with pytest.raises(ValueError, match="kappas"):
        revisited_map(np.zeros((5, 3), dtype=int), gnd, kappas=(0,))
    with pytest.raises(ValueError, match="classic_map"):
        revisited_map(np.zeros((5, 1), dtype=int), [{"ok": [0], "junk": []}])


def test_revisited_map_accepts_torch_tensors():
    torch = pytest.importorskip("torch")
    gnd = [{"bbx": None, "easy": [1], "hard": [0], "junk": []}]
    res = revisited_map(torch.arange(3)[:, None], gnd)
    assert res["medium"]["map"] == 1.0


def test_classic_map_uses_ok_and_ignores_junk():
    rng = np.random.default_rng(3)
    gnd = random_gnd(rng, 50, 8)
    ranks = np.stack([rng.permutation(50) for _ in range(8)], 1)
    classic = classic_map(ranks, [{"ok": g["easy"] + g["hard"], "junk": g["junk"]} for g in gnd])
    medium = revisited_map(ranks, gnd)["medium"]
    assert classic["map"] == pytest.approx(medium["map"], abs=1e-12)
    assert classic["mp@k"] == pytest.approx(medium["mp@k"], abs=1e-12)
    assert classic_map(ranks, gnd)["map"] == pytest.approx(medium["map"], abs=1e-12)
    assert "mAP" in format_table({"oxford5k": classic})


def test_compute_ap_edge_cases():
    assert compute_ap([0, 1, 2], 3) == 1.0
    assert compute_ap([], 4) == 0.0
    assert compute_ap([2, 0], 2) == compute_ap([0, 2], 2)
    with pytest.raises(ValueError):
        compute_ap([0], 0)


def test_format_table_reports_percentages():
    gnd = [{"bbx": None, "easy": [0, 3], "hard": [1], "junk": [2]}]
    res = revisited_map(np.arange(5)[:, None], gnd)
    table = format_table(res)
    assert f"{100 * res['medium']['map']:6.2f}".strip() in table
    assert "mP@10" in table and "Easy" in table and "Hard" in table
    with pytest.raises(TypeError):
        format_table({"x": 1})


# --------------------------------------------------------------------------- ground-truth files
@pytest.mark.parametrize("name,n_images", [("roxford5k", 4993), ("rparis6k", 6322)])
def test_real_ground_truth_files_load(name, n_images):
    cfg = load_ground_truth(os.path.join(GND_DIR, f"gnd_{name}.pkl"))
    assert len(cfg["imlist"]) == n_images
    assert len(cfg["qimlist"]) == 70 and len(cfg["gnd"]) == 70
    for g in cfg["gnd"]:
        assert set(g) >= {"bbx", "easy", "hard", "junk"}
        x1, y1, x2, y2 = g["bbx"]
        assert x2 > x1 and y2 > y1
        assert len(g["easy"]) + len(g["hard"]) > 0
    ranks = np.stack([np.random.default_rng(i).permutation(n_images) for i in range(70)], 1)
    res = revisited_map(ranks, cfg["gnd"])
    assert res["medium"]["map"] < 0.1  # random ranking
    if name == "roxford5k":  # two Oxford queries have no easy positive
        assert np.isnan(res["easy"]["aps"]).sum() == 2


def test_load_ground_truth_reports_missing_keys(tmp_path):
    bad = tmp_path / "gnd_bad.pkl"
    bad.write_bytes(pickle.dumps({"imlist": ["a"], "gnd": []}))
    with pytest.raises(ValueError, match=r"gnd_bad\.pkl.*qimlist"):
        load_ground_truth(bad)
    bad.write_bytes(pickle.dumps({"imlist": ["a"], "qimlist": ["q"], "gnd": [{"bbx": [0, 0, 1, 1], "easy": [0]}]}))
    with pytest.raises(ValueError, match=r"gnd_bad\.pkl.*gnd\[0\].*hard"):
        load_ground_truth(bad)
    bad.write_bytes(pickle.dumps({"imlist": ["a"], "qimlist": ["q"],
                                  "gnd": [{"bbx": [0, 0, 1, 1], "easy": [3], "hard": [], "junk": []}]}))
    with pytest.raises(ValueError, match="outside"):
        load_ground_truth(bad)
    bad.write_bytes(b"not a pickle at all")
    with pytest.raises(ValueError, match=r"gnd_bad\.pkl"):
        load_ground_truth(bad)


# --------------------------------------------------------------------------- ground truth that would run code

@pytest.mark.parametrize("payload", [SystemPayload, ExecPayload, PartialPayload])
def test_malicious_ground_truth_is_refused_without_running_code(tmp_path, payload):
    marker = tmp_path / "pwned"
    evil = {"imlist": ["a"], "qimlist": ["q"],
            "gnd": [{"bbx": [0, 0, 1, 1], "easy": [0], "hard": [], "junk": [], "x": payload(marker)}]}
    path = tmp_path / "gnd_evil.pkl"
    path.write_bytes(pickle.dumps(evil, protocol=2))
    with pytest.raises(UnsafePickleError, match=r"gnd_evil\.pkl.*refusing"):
        load_ground_truth(path)
    assert not marker.exists()
    assert isinstance(UnsafePickleError("x"), ValueError)
