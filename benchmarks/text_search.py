"""Search by text: (a) held-out concepts, (b) real photos, (c) the cold-start table. Prints JSON.

    PYTHONPATH=. python benchmarks/text_search.py [--cache concepts.pt] [--parts a,b,c]

(a) Concepts never trained on: the head is trained (recipe of the shipped head) on the
    glosses of 800 ImageNet classes; text -> class retrieval R@1/R@5 among all 1000 classes
    for the glosses of the 200 others (every 5th class), against the training-free map
    (class-name similarities, ConSE-style) and a random ranking.
(b) Text -> image on real photos: the multi-view scenes (``../shared/data/multiview``) and
    scikit-image's photos, with queries written for them and their relevant photos labelled
    by hand (``QUERIES``); mAP and R@5 (share of queries with a relevant photo in the top 5)
    for the shipped head, the training-free ConSE baseline and random scores.
(c) Cold start: a simulated catalogue (photos of 50 concepts, uploads spread over 3 years)
    and a download log built day by day, where users search Zipf-popular queries and download
    from the top of the behaviour ranking (position bias, a little exploration). For each
    query, photos are ranked by downloads and by the joint space; the table gives the share of
    photos under 1 and under 3 months old in the top 20 and top 100, plain and weighted by
    query popularity (the layout of the stock-photo system's tables).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import time

import numpy as np
import torch

import lit
from lit.text.concepts import heldout_split
from lit.text.head import TextHead, recall_at_k
from lit.text.minilm import load_minilm
from lit.text.model import load_text_model
from lit.text.training import RECIPE, concept_embeddings, train_concept_head

MULTIVIEW = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "multiview")
# query -> relevant photos (prefixes of "scene/file", scene without its "wxbs-..." tag)
QUERIES = {
    "a church": ["sacre_coeur/", "kremlin/", "kn-church/", "church/", "berlin/", "tyn/"],
    "a church at night": ["church/01", "berlin/02", "tyn/01"],
    "a snowy landscape": ["kyiv/01", "strahov/01", "vatutin/01", "bridge/", "stadium/02", "submarine/01", "submarine2/"],
    "a statue": ["vatutin/", "warsaw/", "petrzin/02", "maidan/01"],
    "a submarine": ["submarine/", "submarine2/"],
    "mountains": ["alupka/"],
    "a grassy field": ["zanky/"],
    "a bridge over a river": ["kyiv/", "flood/02", "bridge/"],
    "a palace": ["charlottenburg/", "him/", "warsaw/"],
    "stairs in a park": ["kyiv_dolltheater/", "kyiv_dolltheater2/"],
    "a fountain": ["berlin/02", "petrzin/02"],
    "a city at night": ["flood/01", "maidan/02", "ministry/01", "tyn/01", "rovenki/01", "kyiv_dolltheater2/01",
                        "charlottenburg/01", "silasveta2/02", "warsaw/01", "church/01", "berlin/02", "him/01"],
    "a terrace with windows": ["terrace/"],
    "a river in a city": ["flood/", "ministry/", "maidan/02", "kyiv/02"],
    "a building with a dome": ["sacre_coeur/", "berlin/", "charlottenburg/", "kremlin/", "church/"],
    "a cat": ["skimage/chelsea"],
    "a cup of coffee": ["skimage/coffee"],
    "a rocket": ["skimage/rocket"],
    "an astronaut": ["skimage/astronaut"],
}


def average_precision(scores: np.ndarray, relevant: np.ndarray) -> float:
    order = np.argsort(-scores, kind="stable")
    rel = relevant[order]
    hits = np.cumsum(rel)
    return float((hits[rel] / (np.flatnonzero(rel) + 1)).mean()) if rel.any() else float("nan")


def part_a(concepts) -> dict:
    train, held = heldout_split()
    qx, qy = concepts.select(held)
    ev = lambda h: recall_at_k(h.logits(qx), qy)  # noqa: E731
    t = time.perf_counter()
    head, hist = train_concept_head(concepts, train, RECIPE, eval_fn=ev)
    seconds = time.perf_counter() - t
    free = recall_at_k(qx @ concepts.keys.T, qy)
    g = torch.Generator().manual_seed(0)
    rand = recall_at_k(torch.rand(len(qy), concepts.keys.shape[0], generator=g), qy)
    return {"queries": len(qy), "classes": int(concepts.keys.shape[0]), "trained_classes": len(train),
            "trained_head": ev(head), "training_free": free, "random": rand, "train_seconds": round(seconds, 1),
            "loss_first_last": [round(hist[0]["loss"], 4), round(hist[-1]["loss"], 4)],
            "held_r1_first_epoch": hist[0]["r@1"], "untrained_head": ev(TextHead(RECIPE, concepts.keys))}


def real_photos():
    from skimage import data

    names, images = [], []
    for p in sorted(glob.glob(os.path.join(MULTIVIEW, "*", "*.jpg"))):
        scene = os.path.basename(os.path.dirname(p)).split("-")[-1] if "wxbs" in p else os.path.basename(os.path.dirname(p))
        names.append(f"{scene}/{os.path.basename(p)}")
        images.append(lit.load_image(p, 640))
    for n in ("chelsea", "coffee", "rocket", "astronaut"):
        names.append(f"skimage/{n}")
        images.append(torch.from_numpy(getattr(data, n)()).permute(2, 0, 1).float() / 255)
    return names, images


def part_b() -> dict:
    names, images = real_photos()
    trained = load_text_model("lit-text-effl0")
    pooled = trained.image_tower.embed(images)
    image = trained.image_space(pooled)
    out = {"photos": len(names), "queries": len(QUERIES)}
    rel = np.array([[any(n.startswith(p) for p in pref) for n in names] for pref in QUERIES.values()])
    models = {"trained_head": trained, "training_free": load_text_model("conse-effl0")}
    rng = np.random.default_rng(0)
    per_query = {}
    for key, model in [*models.items(), ("random", None)]:
        if model is None:
            s = rng.random((len(QUERIES), len(names)))
        else:
            s = (model.embed_texts(list(QUERIES)).embeddings @ image.T).numpy()
        aps = [average_precision(s[i], rel[i]) for i in range(len(QUERIES))]
        r5 = [bool(rel[i][np.argsort(-s[i])[:5]].any()) for i in range(len(QUERIES))]
        out[key] = {"map": round(float(np.mean(aps)), 4), "r@5": round(float(np.mean(r5)), 4)}
        per_query[key] = dict(zip(QUERIES, [round(a, 3) for a in aps], strict=True))
    out["ap_per_query"] = per_query
    return out


def part_c(concepts, seed: int = 0, photos_per_concept: int = 1000, n_concepts: int = 50, days: int = 1095,
           searches_per_day: int = 100) -> dict:
    """The cold-start simulation (see the module docstring)."""
    rng = np.random.default_rng(seed)
    model = load_text_model("lit-text-effl0")
    classes = rng.choice(1000, n_concepts, replace=False)
    from lit.text.concepts import class_lemmas

    lemmas = class_lemmas()
    queries = [f"a photo of a {lemmas[c][0]}" for c in classes]
    qemb = model.embed_texts(queries).embeddings.numpy()  # (Q, 1000) sqrt class distributions
    n = photos_per_concept * n_concepts
    concept = np.repeat(np.arange(n_concepts), photos_per_concept)
    upload = rng.uniform(0, days, n)
    # simulated tower posteriors: the photo's class is top-1 about 3 times out of 4
    logits = rng.normal(0, 1.0, (n, 1000)).astype(np.float32)
    logits[np.arange(n), classes[concept]] += rng.normal(4.5, 1.5, n)
    post = np.exp(logits - logits.max(1, keepdims=True))
    post /= post.sum(1, keepdims=True)
    top1 = float((post.argmax(1) == classes[concept]).mean())
    joint = qemb @ np.sqrt(post).T  # (Q, N)
    pop = 1.0 / np.arange(1, n_concepts + 1) ** 1.1
    pop /= pop.sum()
    downloads = np.zeros(n)
    tie = rng.random(n)
    bias = 1.0 / np.arange(1, 51)
    bias /= bias.sum()
    members = [np.flatnonzero(concept == q) for q in range(n_concepts)]
    for day in range(days):
        events = rng.poisson(searches_per_day * pop)
        for q in np.flatnonzero(events):
            m = members[q][upload[members[q]] <= day]
            if len(m) == 0:
                continue
            order = m[np.lexsort((tie[m], -downloads[m]))]  # most downloaded first, ties in a fixed random order
            top = order[:50]
            k = events[q]
            explore = rng.binomial(k, 0.1)
            np.add.at(downloads, top[rng.choice(len(top), k - explore, p=bias[:len(top)] / bias[:len(top)].sum())], 1)
            np.add.at(downloads, rng.choice(m, explore), 1)
    age = days - upload
    table = {}
    for method in ("behaviour", "joint_space"):
        rows = {}
        for topk in (20, 100):
            new1, new3 = [], []
            for q in range(n_concepts):
                if method == "behaviour":
                    m = members[q]
                    top = m[np.lexsort((tie[m], -downloads[m]))][:topk]
                else:
                    top = np.argsort(-joint[q], kind="stable")[:topk]
                new1.append(float((age[top] < 30).mean()))
                new3.append(float((age[top] < 91).mean()))
            rows[f"top{topk}"] = {"under_1_month": round(100 * np.mean(new1), 2), "under_3_months": round(100 * np.mean(new3), 2),
                                  "under_1_month_weighted": round(100 * float(np.dot(pop, new1)), 2),
                                  "under_3_months_weighted": round(100 * float(np.dot(pop, new3)), 2)}
        table[method] = rows
    precision = float(np.mean([(concept[np.argsort(-joint[q])[:100]] == q).mean() for q in range(n_concepts)]))
    return {"photos": n, "concepts": n_concepts, "days": days, "searches_per_day": searches_per_day,
            "catalogue_under_1_month": round(100 * float((age < 30).mean()), 2),
            "catalogue_under_3_months": round(100 * float((age < 91).mean()), 2),
            "simulated_tower_top1": round(top1, 3), "joint_space_precision_at_100": round(precision, 3),
            "table_percent": table,
            "reference_stock_photo_system_top100": {"behaviour": [0.72, 4.71], "joint_embedding": [2.68, 9.6]}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", help="cache file of the concept-text embeddings (made once, ~3 min)")
    ap.add_argument("--parts", default="a,b,c")
    ap.add_argument("--searches-per-day", type=int, default=100, help="(c) query events per simulated day")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    parts = args.parts.split(",")
    out = {}
    concepts = concept_embeddings(load_minilm(), cache=args.cache) if {"a"} & set(parts) else None
    with torch.no_grad():
        if "a" in parts:
            with torch.enable_grad():
                out["a_heldout_concepts"] = part_a(concepts)
        if "b" in parts:
            out["b_real_photos"] = part_b()
        if "c" in parts:
            out["c_cold_start"] = part_c(concepts, searches_per_day=args.searches_per_day)
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
