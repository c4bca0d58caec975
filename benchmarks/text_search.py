"""Search by text: (a) held-out concepts, (b) real photos, (c) the cold-start table. Prints JSON.

    PYTHONPATH=. python benchmarks/text_search.py [--cache concepts.pt] [--synset-cache synsets21k.pt]
        [--parts a,b,c] [--seeds 2]

Needs WordNet 3.0's noun file (Debian ``wordnet-base``) for the 21k training texts.

(a) Concepts never trained on, over 5 class splits (index % 5 = r held out) x ``--seeds`` seeds:
    the head is trained (the shipped recipe) on 800 ImageNet classes and on the 21k synsets
    outside a fifth of them (crc32 % 5 = r); R@1/R@5 among all 1000 classes for the glosses of
    the 200 held-out classes, and the mAP of their 1k classes for short queries (the first
    lemma) of the held-out 21k synsets; against the training-free map (class-name
    similarities, ConSE-style), the trained map alone (without the head's mixture with the
    training-free map for queries of >= 6 tokens), session 6's gloss-only head and a random
    ranking; mean +- std, and per seed a paired comparison over all 1000 held-out glosses
    (ranks, bootstrap of the gains).
(b) Text -> image on real photos: the multi-view scenes (``../shared/data/multiview``), the
    landmark pairs (``../shared/data/landmark-pairs``) and scikit-image's photos, with queries
    written for them and their relevant photos labelled by hand (``QUERIES``); mAP and R@5
    (share of queries with a relevant photo in the top 5) for the shipped head, heads of the
    same recipe with other seeds, the gloss-only head, the training-free ConSE baseline and
    random scores; per-query paired comparison and bootstrap of shipped head vs training-free.
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
from dataclasses import replace

import numpy as np
import torch

import lit
from lit.text.factory import load_text_model
from lit.text.head import HeadConfig, TextHead, recall_at_k
from lit.text.minilm import load_minilm
from lit.text.training import (
    GLOSS_RECIPE,
    RECIPE,
    concept_embeddings,
    synset_embeddings,
    train_concept_head,
)

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
    # added in session 7 with 12 more photos (scikit-image's and the landmark pairs), written and
    # labelled before any run on them
    "a man with a camera": ["skimage/camera"],
    "old coins": ["skimage/coins"],
    "a clock": ["skimage/clock"],
    "a motorcycle": ["skimage/motorcycle"],
    "a page of text": ["skimage/page"],
    "the moon": ["skimage/moon"],
    "galaxies in space": ["skimage/hubble_deep_field"],
    "a horse": ["skimage/horse"],
    "a brick building with stairs": ["street/"],
}
LANDMARK_PAIRS = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "landmark-pairs")
#: scikit-image photos (name -> loader name); all ship with scikit-image (no download)
SKIMAGE = {"chelsea": "chelsea", "coffee": "coffee", "rocket": "rocket", "astronaut": "astronaut", "camera": "camera",
           "coins": "coins", "clock": "clock", "motorcycle": "stereo_motorcycle", "page": "page", "moon": "moon",
           "hubble_deep_field": "hubble_deep_field", "horse": "horse"}


def average_precision(scores: np.ndarray, relevant: np.ndarray) -> float:
    order = np.argsort(-scores, kind="stable")
    rel = relevant[order]
    hits = np.cumsum(rel)
    return float((hits[rel] / (np.flatnonzero(rel) + 1)).mean()) if rel.any() else float("nan")


def _stats(xs) -> dict:
    xs = np.asarray(xs, dtype=float)
    return {"mean": round(float(xs.mean()), 4), "std": round(float(xs.std(ddof=1)) if len(xs) > 1 else 0.0, 4)}


def _ranks(scores: torch.Tensor, targets: torch.Tensor) -> np.ndarray:
    return (scores > scores.gather(1, targets[:, None])).sum(1).numpy()


def _short_queries(synsets, graph, wnids, held_syn):
    """First lemma of each held-out 21k synset with a 1k target at most 1 hop up, and its target classes."""
    from lit.text.hierarchy import synset_targets

    tg = synset_targets(graph, wnids, sorted(held_syn))
    first = {}
    for i, (w, k) in enumerate(zip(synsets.wnids, synsets.kinds, strict=True)):
        if k == "lemma" and w in tg and w not in first and tg[w][1] <= 1:
            first[w] = i
    keys = sorted(first)
    return synsets.embeddings[[first[w] for w in keys]].float(), [tg[w][0] for w in keys], [first[w] for w in keys]


def _map_over_classes(scores: torch.Tensor, targets: list[list[int]]) -> float:
    s = scores.numpy()
    aps = []
    for i, t in enumerate(targets):
        rel = np.zeros(s.shape[1], bool)
        rel[t] = True
        aps.append(average_precision(s[i], rel))
    return float(np.mean(aps))


def part_a(concepts, synsets, graph, concept_tokens, synset_tokens, splits: int = 5, seeds=(0, 1)) -> dict:
    """Held-out concepts over ``splits`` class splits (every 5th class, 5 offsets) and ``seeds`` seeds.

    ``concept_tokens``, ``synset_tokens``: WordPiece tokens of each concept / synset text (the
    head's mixture with the training-free map depends on them).
    """
    import zlib

    from lit.text.training import imagenet_wnids, train_recipe_head

    wnids = imagenet_wnids()
    free_head = TextHead(HeadConfig(), concepts.keys)
    g = torch.Generator().manual_seed(0)
    rows, gloss_rows, alone_rows = [], [], []
    ranks = {seed: ([], []) for seed in seeds}  # per seed: the head's and the training-free map's ranks
    t0 = time.perf_counter()
    for r in range(splits):
        held = [c for c in range(1000) if c % 5 == r]
        train = [c for c in range(1000) if c % 5 != r]
        qx, qy = concepts.select(held)
        qn = concept_tokens[torch.tensor([int(y) % 5 == r and k == "definition"
                                          for y, k in zip(concepts.labels.tolist(), concepts.kinds, strict=True)])]
        held_syn = {w for w in set(synsets.wnids) if zlib.crc32(w.encode()) % 5 == r}
        keep = [i for i, w in enumerate(synsets.wnids) if w not in held_syn]
        train_syn = type(synsets)(synsets.embeddings[keep], [synsets.wnids[i] for i in keep],
                                  [synsets.kinds[i] for i in keep])
        sx, st, si = _short_queries(synsets, graph, wnids, held_syn)
        sn = synset_tokens[si]
        with torch.no_grad():
            free_lg = free_head.logits(qx)
            free = {**recall_at_k(free_lg, qy), "short_map": _map_over_classes(free_head.logits(sx), st)}
            rand = recall_at_k(torch.rand(len(qy), 1000, generator=g), qy)
        for seed in seeds:
            head, hist = train_recipe_head(concepts, train_syn, graph, train, replace(RECIPE, seed=seed))
            gl, _ = train_concept_head(concepts, train, replace(GLOSS_RECIPE, seed=seed))
            with torch.no_grad():
                lg = head.logits(qx, tokens=qn)
                rec = {"split": r, "seed": seed, **recall_at_k(lg, qy),
                       "short_map": _map_over_classes(head.logits(sx, tokens=sn), st),
                       "loss_first_last": [round(hist[0]["loss"], 3), round(hist[-1]["loss"], 3)]}
                gloss_rows.append({**recall_at_k(gl.logits(qx), qy), "short_map": _map_over_classes(gl.logits(sx), st)})
                alone_rows.append({**recall_at_k(head.trained_logits(qx), qy),
                                   "short_map": _map_over_classes(head.trained_logits(sx), st)})
            ranks[seed][0].append(_ranks(lg, qy))
            ranks[seed][1].append(_ranks(free_lg, qy))
            rows.append({**rec, "training_free": free, "random": rand, "short_queries": len(st)})
    paired = {}
    for seed, (hs, fs) in ranks.items():  # paired over all held-out glosses: ranks, bootstrap of the gains
        h, f = np.concatenate(hs), np.concatenate(fs)
        idx = np.random.default_rng(0).integers(0, len(h), (10000, len(h)))
        paired[f"paired_ranks_all_1000_held_out_glosses_seed{seed}"] = {
            "head_better": int((h < f).sum()), "free_better": int((h > f).sum()), "same_rank": int((h == f).sum()),
            **{f"r@{k}_gain": round(float((h < k).mean() - (f < k).mean()), 4) for k in (1, 5)},
            **{f"r@{k}_gain_95ci": [round(float(np.quantile(((h[idx] < k).mean(1) - (f[idx] < k).mean(1)), q)), 4)
                                    for q in (0.025, 0.975)] for k in (1, 5)}}

    def summary(recs, key):
        return {k: _stats([x[key][k] if key else x[k] for x in recs]) for k in ("r@1", "r@5", "short_map")}

    return {"splits": splits, "seeds": list(seeds), "queries_per_split": len(qy), "classes": 1000,
            "trained_classes_per_split": 800, "short_queries_per_split": [x["short_queries"] for x in rows[::len(seeds)]],
            "trained_head": summary(rows, None), "training_free": summary(rows[::len(seeds)], "training_free"),
            "trained_map_alone_free_weight_0": summary(alone_rows, None),
            "gloss_only_head_session6": summary(gloss_rows, None),
            "random": {k: _stats([x["random"][k] for x in rows[::len(seeds)]]) for k in ("r@1", "r@5")},
            **paired,
            "per_run": rows, "seconds": round(time.perf_counter() - t0, 1)}


def real_photos():
    from skimage import data

    names, images = [], []
    for p in sorted(glob.glob(os.path.join(MULTIVIEW, "*", "*.jpg"))):
        scene = os.path.basename(os.path.dirname(p)).split("-")[-1] if "wxbs" in p else os.path.basename(os.path.dirname(p))
        names.append(f"{scene}/{os.path.basename(p)}")
        images.append(lit.load_image(p, 640))
    for p in sorted(glob.glob(os.path.join(LANDMARK_PAIRS, "*.*"))):
        if p.lower().endswith((".jpg", ".jpeg", ".png")):  # two Sacre-Coeur views, two views of one street
            scene = "sacre_coeur" if "sacre" in os.path.basename(p) else "street"
            names.append(f"{scene}/landmark-pairs-{os.path.basename(p)}")
            images.append(lit.load_image(p, 640))
    for n, loader in SKIMAGE.items():
        a = getattr(data, loader)()
        a = a[0] if isinstance(a, tuple) else a  # stereo_motorcycle: (left, right, disparity)
        a = np.asarray(a, dtype=np.float32) / (1.0 if a.dtype == bool else 255.0)
        a = np.repeat(a[..., None], 3, axis=2) if a.ndim == 2 else a[..., :3]
        names.append(f"skimage/{n}")
        images.append(torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1).float())
    return names, images


def part_b(extra_heads: dict | None = None) -> dict:
    """Text -> image on the real photos; ``extra_heads``: more heads (name -> TextHead) to score the same way."""
    from lit.text.model import TextModel

    names, images = real_photos()
    trained = load_text_model("lit-text-effl0")
    pooled = trained.image_tower.embed(images)
    image = trained.image_space(pooled)
    out = {"photos": len(names), "queries": len(QUERIES)}
    rel = np.array([[any(n.startswith(p) for p in pref) for n in names] for pref in QUERIES.values()])
    models = {"trained_head": trained, "training_free": load_text_model("conse-effl0")}
    for key, head in (extra_heads or {}).items():
        models[key] = TextModel(trained.encoder, head, trained.image_tower, key)
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
    out["paired_head_vs_training_free"] = paired_comparison(per_query["trained_head"], per_query["training_free"])
    seeds = [k for k in out if k == "trained_head" or k.startswith("trained_head_seed")]
    if len(seeds) > 1:
        out["trained_head_over_seeds"] = {"heads": seeds, **{m: _stats([out[k][m] for k in seeds]) for m in ("map", "r@5")}}
    return out


def paired_comparison(a: dict, b: dict, resamples: int = 10000, seed: int = 0) -> dict:
    """Per-query comparison of two systems' APs: wins/ties/losses, mean gain, paired bootstrap over queries."""
    x = np.array([a[q] - b[q] for q in a])
    rng = np.random.default_rng(seed)
    boot = x[rng.integers(0, len(x), (resamples, len(x)))].mean(1)
    return {"queries": len(x), "wins": int((x > 1e-9).sum()), "ties": int((abs(x) <= 1e-9).sum()),
            "losses": int((x < -1e-9).sum()), "mean_ap_gain": round(float(x.mean()), 4),
            "bootstrap_95ci": [round(float(np.quantile(boot, 0.025)), 4), round(float(np.quantile(boot, 0.975)), 4)],
            "bootstrap_share_gain_above_0": round(float((boot > 0).mean()), 4)}


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
    ap.add_argument("--synset-cache", help="cache file of the 21k synset-text embeddings (made once, ~5 min)")
    ap.add_argument("--seeds", type=int, default=2, help="(a) training seeds per split; (b) heads of seeds 1.. beside the shipped one")
    ap.add_argument("--parts", default="a,b,c")
    ap.add_argument("--searches-per-day", type=int, default=100, help="(c) query events per simulated day")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    parts = args.parts.split(",")
    out = {}
    from lit.text.hierarchy import read_noun_hypernyms
    from lit.text.training import imagenet_wnids, train_recipe_head

    encoder = load_minilm() if {"a", "b"} & set(parts) else None
    concepts = concept_embeddings(encoder, cache=args.cache) if {"a", "b"} & set(parts) else None
    synsets = synset_embeddings(encoder, imagenet_wnids(), cache=args.synset_cache) if concepts is not None else None
    graph = read_noun_hypernyms() if concepts is not None else None
    with torch.no_grad():
        if "a" in parts:
            with torch.enable_grad():
                from lit.text.concepts import concept_texts
                from lit.text.hierarchy import synset_texts

                ctok = encoder.token_counts(list(concept_texts(range(1000)).texts))
                stok = encoder.token_counts(synset_texts(imagenet_wnids())[0])
                if len(ctok) != len(concepts.labels) or len(stok) != len(synsets.wnids):
                    raise SystemExit("the embedding caches do not match the concept texts: delete them and rerun")
                out["a_heldout_concepts"] = part_a(concepts, synsets, graph, ctok, stok, seeds=tuple(range(args.seeds)))
        if "b" in parts:
            with torch.enable_grad():
                extra = {f"trained_head_seed{s}": train_recipe_head(concepts, synsets, graph, range(1000),
                                                                    replace(RECIPE, seed=s))[0]
                         for s in range(1, args.seeds + 1)}
                extra["gloss_only_head_session6"] = train_concept_head(concepts, range(1000), GLOSS_RECIPE)[0]
            out["b_real_photos"] = part_b(extra)
        if "c" in parts:
            out["c_cold_start"] = part_c(concepts, searches_per_day=args.searches_per_day)
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
