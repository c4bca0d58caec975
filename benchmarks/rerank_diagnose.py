"""Which tentative matches to verify: a diagnostic over every pair of photos of the multi-view
training scenes (lit-effl0), behind the choices of :mod:`lit.pipeline.rerank`. Prints JSON.

For each rule of tentative matches (the model's background test at several margins, mutual
nearest neighbours above a cosine floor, a ratio test, the k nearest neighbours of each query
super-feature), RANSAC as re-ranking runs it (similarity, inliers within ``--threshold`` of the
image size, scale tolerance ``--scale-tolerance``), and per pair: the tentative matches, the
inliers, the support (distinct query templates among the inliers) and the inliers weighted
by their cosine cubed (ASMK's selectivity). Reported: the mean
matches of same-scene and of unrelated pairs, the median support of same-scene pairs, the 99th
percentile and the maximum of unrelated pairs, the queries whose best same-scene support beats
their best unrelated one, and the mAP of re-ranking all candidates with each minimum support
(or inliers, or weighted inliers; mean over ``--seeds`` k-means seeds; ASMK alone first). Also the ASMK rank of each query's
positives when the first is not first.

    python benchmarks/rerank_diagnose.py --cache feats.pt    # the cache of benchmarks/rerank.py
"""

import argparse
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

from lit.bench import print_report


def tentative(q, c, kind: str, value, bg_q=None, bg_c=None):
    """(query rows, candidate rows) of the tentative matches of two unit-descriptor sets."""
    s = q @ c.T
    rows = torch.arange(s.shape[0])
    if kind in ("mutual", "background"):
        nq, nc = s.argmax(1), s.argmax(0)
        sv = s[rows, nq]
        keep = nc[nq] == rows
        if kind == "mutual":
            keep &= sv >= value
        else:
            keep &= (sv - bg_q >= value) & (sv - bg_c[nq] >= value)
        return rows[keep], nq[keep]
    if kind == "ratio":  # nearest neighbour, its distance at most value x the second's
        v, ix = s.topk(2, dim=1)
        d = (2 - 2 * v).clamp_min(0).sqrt()
        keep = d[:, 0] <= value * d[:, 1]
        return rows[keep], ix[keep, 0]
    k, floor = value  # "knn": the k nearest of each query super-feature above a floor
    v, ix = s.topk(k, dim=1)
    keep = v >= floor
    return rows[:, None].expand_as(ix)[keep], ix[keep]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default="/work/shared/data/multiview", help="folder with one sub-folder per scene")
    p.add_argument("--cache", default=None, help="feature cache of benchmarks/rerank.py (made when missing)")
    p.add_argument("--seeds", type=int, default=4)
    p.add_argument("--threshold", type=float, default=40 / 512, help="inlier distance, fraction of the image size")
    p.add_argument("--scale-tolerance", type=float, default=1.5)
    p.add_argument("--hypotheses", type=int, default=128)
    p.add_argument("--min-support", default="4,5,6,7,8,9,10,12", help="minimum supports to re-rank with")
    p.add_argument("--min-weight", default="2,3,3.5,4,4.5,5,6", help="minimum weighted inliers to re-rank with")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)

    import lit
    from lit.asmk import ASMK
    from lit.bench.multiview import (
        LIT_EFFL0_HELD_OUT,
        codebook_photos,
        extract_all,
        ranking_metrics,
        scene_images,
    )
    from lit.matching import background_similarity
    from lit.pipeline import codebook_size
    from lit.pipeline.verify import ransac
    from lit.types import LocalFeatures

    torch.set_num_threads(1)
    paths, labels, scenes = scene_images(args.root)
    model = lit.load_model("lit-effl0")
    if args.cache and os.path.exists(args.cache):
        blob = torch.load(args.cache, weights_only=False)
        assert blob["paths"] == paths, "the cache holds other photos"
        feats = [LocalFeatures(*f) for f in blob["feats"]]
    else:
        feats = extract_all(model, paths)
        if args.cache:
            torch.save({"paths": paths, "feats": [tuple(f) for f in feats]}, args.cache)
    ev = np.flatnonzero(~np.isin(np.array(scenes)[labels], LIT_EFFL0_HELD_OUT))  # the training scenes only
    db, lab, n = [feats[i] for i in ev], labels[ev], len(ev)
    row = {p_: i for i, p_ in enumerate(paths)}
    cb = codebook_photos("auto", args.root, [paths[i] for i in ev])[0]
    train = torch.cat([feats[row[p_]].descriptors for p_ in cb]).numpy()
    desc = torch.cat([f.descriptors for f in db]).numpy()
    ids = np.concatenate([np.full(len(f), i) for i, f in enumerate(db)])
    asmk = []
    for seed in range(args.seeds):
        index = ASMK.train(train, size=codebook_size(len(train)), seed=seed, iterations=15)
        index.add(desc, ids)
        asmk.append(np.asarray(index.scores(desc, ids)))
    same = lab[:, None] == lab[None]
    np.fill_diagonal(same, False)
    other = lab[:, None] != lab[None]
    unit = [F.normalize(f.descriptors.float(), dim=1) for f in db]
    bank = model.match_rule().background
    bgs = [background_similarity(f.descriptors, bank) for f in db]

    def rerank_map(support: np.ndarray, minimum: float) -> float:
        maps = []
        for s in asmk:
            rel = []
            for q in range(n):
                cs = np.array([c for c in range(n) if c != q])
                key = np.where(support[q, cs] >= minimum, 10 + support[q, cs] + s[q, cs], s[q, cs])
                rel.append(lab[cs[np.argsort(-key, kind="stable")]] == lab[q])
            maps.append(ranking_metrics(rel)["map"])
        return float(np.mean(maps))

    ranks = {}
    for q in range(n):
        cs = np.array([c for c in range(n) if c != q])
        order = cs[np.argsort(-asmk[0][q, cs], kind="stable")]
        r = [int(np.flatnonzero(order == c)[0]) + 1 for c in cs if lab[c] == lab[q]]
        if min(r) > 1:
            ranks[os.path.relpath(paths[ev[q]], args.root)] = r
    rules = [("background", 0.1), ("background", 0.0), ("background", -0.05), ("background", -0.1),
             ("mutual", 0.0), ("mutual", 0.4), ("mutual", 0.5), ("mutual", 0.6), ("mutual", 0.7),
             ("ratio", 0.9), ("ratio", 0.95), ("knn", (2, 0.6))]
    minima = [float(m) for m in args.min_support.split(",")]
    out = {"scenes": "training", "images": n, "asmk_map": rerank_map(np.zeros((n, n)), 1),
           "asmk_ranks_of_positives_not_first": ranks, "rules": []}
    print(f"ASMK alone: mAP {out['asmk_map']:.1f}", file=sys.stderr)
    for kind, value in rules:
        matches, inl, sup, wgt = np.zeros((n, n)), np.zeros((n, n)), np.zeros((n, n)), np.zeros((n, n))
        for q in range(n):
            cs = [c for c in range(n) if c != q]
            ms = [tentative(unit[q], unit[c], kind, value, bgs[q], bgs[c]) for c in cs]
            m = max(2, max(len(qi) for qi, _ in ms))
            src, dst = torch.zeros(len(cs), m, 2), torch.zeros(len(cs), m, 2)
            valid, ratio = torch.zeros(len(cs), m, dtype=torch.bool), torch.ones(len(cs), m)
            for j, (c, (qi, ci)) in enumerate(zip(cs, ms, strict=True)):
                k = len(qi)
                src[j, :k], dst[j, :k], valid[j, :k] = db[q].positions[qi], db[c].positions[ci], True
                ratio[j, :k] = db[q].scales[qi] / db[c].scales[ci]
            v = ransac(src, dst, valid, threshold=args.threshold * 512, hypotheses=args.hypotheses, seed=0,
                       scale_ratio=ratio, scale_tolerance=args.scale_tolerance)
            for j, (c, (qi, _)) in enumerate(zip(cs, ms, strict=True)):
                k = len(qi)
                matches[q, c], inl[q, c] = k, int(v.inliers[j, :k].sum())
                sup[q, c] = len(torch.unique(db[q].superfeature_ids[qi][v.inliers[j, :k]]))
                ci = ms[j][1]
                cos = (unit[q][qi] * unit[c][ci]).sum(1).clamp_min(0)
                wgt[q, c] = float((cos[v.inliers[j, :k]] ** 3).sum())
        best_same = np.where(same, sup, -1).max(1)
        best_other = np.where(other, sup, -1).max(1)
        res = {"rule": kind, "value": value, "matches_same_scene": float(matches[same].mean()),
               "matches_unrelated": float(matches[other].mean()), "support_same_scene_median": float(np.median(sup[same])),
               "support_unrelated_p99": float(np.percentile(sup[other], 99)), "support_unrelated_max": float(sup[other].max()),
               "queries_same_beats_unrelated": int((best_same > best_other).sum()),
               "map_by_min_support": {f"{m:g}": rerank_map(sup, m) for m in minima},
               "map_by_min_inliers": {f"{m:g}": rerank_map(inl, m) for m in minima},
               "map_by_min_weighted_inliers": {w: rerank_map(wgt, float(w)) for w in args.min_weight.split(",")}}
        out["rules"].append(res)
        print(f"{kind} {value}: matches {res['matches_same_scene']:.1f} / {res['matches_unrelated']:.1f}, support "
              f"{res['support_same_scene_median']:.0f} / p99 {res['support_unrelated_p99']:.0f}, mAP by min support "
              + " ".join(f"{v:.1f}" for v in res["map_by_min_support"].values()), file=sys.stderr, flush=True)
    print_report(out, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
