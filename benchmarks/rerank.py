"""Re-ranking on the multi-view scenes: mAP and mP@5 of ASMK alone, with geometric
verification of the top N (``--rerank``) and with query expansion (``--expand``), the time
per query and the memory per database image. Every photo of the evaluated scenes is a query
(itself left out); its positives are the other photos of its scene. The codebook is learned
on the other scenes' photos (as in ``benchmarks/multiview.py``), over ``--seeds`` k-means
seeds (mean and std). Prints JSON.

    python benchmarks/rerank.py --scenes training --seeds 4     # choose defaults here
    python benchmarks/rerank.py --scenes held-out --seeds 4     # report once

The search is :func:`lit.pipeline.search` with a :class:`lit.pipeline.Reranker`, as in
``lit search --rerank N --expand K``. ``--model fire`` needs FIRe's weights in the cache
(they cannot be downloaded everywhere); the revisited benchmark takes the same options
(``benchmarks/revisited.py --rerank N --expand K``).
"""

import argparse
import os
import sys
import time
from dataclasses import replace

import numpy as np
import torch

from lit.bench import print_report


def parse_configs(text: str) -> list[tuple[int, int]]:
    """``"0,20,50,100,100+1"`` -> [(0, 0), (20, 0), ..., (100, 1)] (rerank N, expand K)."""
    out = []
    for item in text.split(","):
        n, _, k = item.partition("+")
        out.append((int(n), int(k or 0)))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default=None, help="folder with one sub-folder per scene (default: the multi-view set)")
    p.add_argument("--scenes", default="training", help="held-out, training (lit-effl0's), or comma-separated folders")
    p.add_argument("--model", default="lit-effl0", help="lit-effl0, fire (weights must be in the cache) or a checkpoint")
    p.add_argument("--configs", default="0,20,50,100,100+1,100+2", help="rerank N [+ expand K], comma-separated")
    p.add_argument("--seeds", type=int, default=4, help="k-means seeds")
    p.add_argument("--geometry", default="superfeatures", choices=("superfeatures", "tokens"),
                   help="what is verified: the super-features' attention centroids, or the backbone's local tokens "
                        "(lit.models.TokenExtractor; no expansion)")
    p.add_argument("--token-cache", default=None, help="token cache file (torch.save), made when missing")
    p.add_argument("--floor", default=None, help="lowest cosine of a tentative match, 'model' or 'none' (default: the policy's)")
    p.add_argument("--margin", default=None, help="background margin of tentative matches, 'model' or 'none' (default: none)")
    p.add_argument("--min-support", type=int, default=None, help="distinct query templates among the inliers that verify")
    p.add_argument("--hypotheses", type=int, default=None, help="RANSAC hypotheses per candidate")
    p.add_argument("--query-num", default=None, help="strongest query features matched, or 'all' (default: the policy's)")
    p.add_argument("--threshold", type=float, default=None, help="inlier distance, fraction of the image size")
    p.add_argument("--transform", default=None, help="similarity or affine")
    p.add_argument("--scale-tolerance", default=None, help="factor, or 'none'")
    p.add_argument("--timing-candidates", type=int, default=100, help="short list of the timing (default 100)")
    p.add_argument("--cache", default=None, help="feature cache file (torch.save), made when missing")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--per-query", action="store_true", help="also print each query's AP")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    import lit
    from lit.asmk import ASMK
    from lit.bench.multiview import (
        DEFAULT_ROOT,
        LIT_EFFL0_HELD_OUT,
        codebook_photos,
        extract_all,
        ranking_metrics,
        scene_images,
    )
    from lit.index_file import IndexInfo
    from lit.matching import MatchRule
    from lit.pipeline import Reranker, RerankSettings, codebook_size, search
    from lit.types import LocalFeatures

    root = args.root or str(DEFAULT_ROOT)
    if not os.path.isdir(root):
        root = "/work/shared/data/multiview" if os.path.isdir("/work/shared/data/multiview") else root
    paths, labels, scenes = scene_images(root)
    scene_of = np.array(scenes)[labels]
    if args.scenes in ("held-out", "training"):
        held = np.isin(scene_of, LIT_EFFL0_HELD_OUT)
        ev = held if args.scenes == "held-out" else ~held
    else:
        ev = np.isin(scene_of, args.scenes.split(","))
    model = lit.load_model(args.model, device=args.device)
    cache = args.cache
    if cache and os.path.exists(cache):
        blob = torch.load(cache, weights_only=False)
        assert blob["paths"] == paths, "the cache holds other photos"
        feats = [LocalFeatures(*f) for f in blob["feats"]]
    else:
        t = time.perf_counter()
        feats = extract_all(model, paths)
        print(f"extracted {len(paths)} photos in {time.perf_counter() - t:.0f} s", file=sys.stderr)
        if cache:
            torch.save({"paths": paths, "feats": [tuple(f) for f in feats]}, cache)
    tokens = None
    if args.geometry == "tokens":
        from lit.models import token_extractor

        if args.token_cache and os.path.exists(args.token_cache):
            blob = torch.load(args.token_cache, weights_only=False)
            assert blob["paths"] == paths, "the token cache holds other photos"
            tokens = [LocalFeatures(*f) for f in blob["feats"]]
        else:
            t = time.perf_counter()
            extractor = token_extractor(model)
            tokens = [extractor.extract(p_) for p_ in paths]
            print(f"tokens of {len(paths)} photos in {time.perf_counter() - t:.0f} s", file=sys.stderr)
            if args.token_cache:
                torch.save({"paths": paths, "feats": [tuple(f) for f in tokens]}, args.token_cache)
    ev_idx = np.flatnonzero(ev)
    names = [os.path.relpath(paths[i], root) for i in ev_idx]
    db = [feats[i] for i in ev_idx]
    cb_paths, cb_what = codebook_photos("auto", root, [paths[i] for i in ev_idx])
    row = {p_: i for i, p_ in enumerate(paths)}
    cb_feats = [feats[row[p_]] for p_ in cb_paths]
    positives = [{n for n, l in zip(names, labels[ev_idx], strict=True) if l == labels[i] and n != names[k]}
                 for k, i in enumerate(ev_idx)]

    size = model.cfg.runtime.image_size
    settings = RerankSettings.tokens() if tokens else RerankSettings(image_size=size)
    checked = [tokens[i] for i in ev_idx] if tokens else db  # what the reranker verifies
    over = {}
    for key in ("floor", "margin"):
        value = getattr(args, key)
        if value is not None:
            over[key] = None if value == "none" else ("model" if value == "model" else float(value))
    if args.min_support is not None:
        over["min_support"] = args.min_support
    if args.hypotheses is not None:
        over["hypotheses"] = args.hypotheses
    if args.query_num is not None:
        over["query_num"] = None if args.query_num == "all" else int(args.query_num)
    if args.threshold is not None:
        over["threshold"] = args.threshold
    if args.transform is not None:
        over["model"] = args.transform
    if args.scale_tolerance is not None:
        over["scale_tolerance"] = None if args.scale_tolerance == "none" else float(args.scale_tolerance)
    settings = replace(settings, **over)
    rule = MatchRule(None) if tokens else model.match_rule()
    info = IndexInfo(names=tuple(names))
    train = torch.cat([f.descriptors.cpu() for f in cb_feats]).numpy()
    desc = torch.cat([f.descriptors.cpu() for f in db]).numpy()
    ids = np.concatenate([np.full(len(f), i) for i, f in enumerate(db)])
    configs = parse_configs(args.configs)
    if tokens is not None:
        configs = [c for c in configs if not c[1]]  # expansion needs super-features
    runs: dict[str, list[dict]] = {}
    for seed in range(args.seeds):
        index = ASMK.train(train, size=codebook_size(len(train)), seed=seed, iterations=15)
        index.add(desc, ids)
        for n, k in configs:
            reranker = Reranker(checked, rule, settings, device=args.device)
            t = time.perf_counter()
            res = search(index, info, db, names, topk=None, exclude_self=True, rerank=n, expand=k,
                         reranker=reranker if (n or k) else None, verify_queries=checked if tokens else None)
            sec = (time.perf_counter() - t) / len(names)
            m = ranking_metrics([np.array([h.name in pos for h in r.hits]) for r, pos in zip(res, positives, strict=True)],
                                [len(pos) for pos in positives], ks=(5,))
            runs.setdefault(f"{n}+{k}", []).append({"map": m["map"], "mp@5": m["mp@5"], "s_per_query": sec, "ap": m["ap"]})
    table = {}
    for key, rs in runs.items():
        table[key] = {"rerank": int(key.split("+")[0]), "expand": int(key.split("+")[1]),
                      "map": float(np.mean([r["map"] for r in rs])), "map_std": float(np.std([r["map"] for r in rs])),
                      "mp@5": float(np.mean([r["mp@5"] for r in rs])), "mp@5_std": float(np.std([r["mp@5"] for r in rs])),
                      "s_per_query": float(np.mean([r["s_per_query"] for r in rs])),
                      "ap": np.mean([r["ap"] for r in rs], axis=0).tolist()}

    # timing of one query against a short list of --timing-candidates images (repeated when the
    # database is smaller), with a cold cache (features read and background similarities computed)
    # and a warm one (those kept from earlier queries)
    n_t = args.timing_candidates
    cand_ids = [i % len(db) for i in range(n_t)]
    fresh = [LocalFeatures(*(t.clone() if t is not None else None for t in checked[i])) for i in cand_ids]
    reranker = Reranker(fresh, rule, settings, device=args.device)
    t, c = time.perf_counter(), time.process_time()
    reranker.rerank(checked[0], list(range(n_t)), [0.0] * n_t, n_t)
    cold, cold_cpu = time.perf_counter() - t, time.process_time() - c
    t, c = time.perf_counter(), time.process_time()
    reranker.rerank(checked[1 % len(db)], list(range(n_t)), [0.0] * n_t, n_t)
    warm, warm_cpu = time.perf_counter() - t, time.process_time() - c
    f0 = reranker.database(0)
    per_image = sum(x.element_size() * x.numel() for x in f0 if x is not None)
    if reranker.rule.background is not None:  # + the cached background similarities
        per_image += 4 * len(f0)
    if not args.per_query:
        for r in table.values():
            del r["ap"]
    out = {"root": root, "scenes": args.scenes, "model": args.model, "geometry": args.geometry, "images": len(names), "codebook": cb_what,
           "seeds": args.seeds, "settings": {k: getattr(settings, k) for k in settings.__dataclass_fields__},
           "device": args.device, "threads": torch.get_num_threads(), "results": table,
           "timing": {"candidates": n_t, "cold_s": cold, "warm_s": warm, "cold_cpu_s": cold_cpu, "warm_cpu_s": warm_cpu,
                      "load_average": os.getloadavg()[0]},
           "memory_per_db_image_bytes": per_image, "features_per_image": len(f0)}
    print(f"\n{'rerank+expand':14s} {'mAP':>6s} {'(std)':>6s} {'mP@5':>6s} {'s/query':>8s}", file=sys.stderr)
    for key, r in table.items():
        print(f"{key:14s} {r['map']:6.1f} {r['map_std']:6.1f} {r['mp@5']:6.1f} {r['s_per_query']:8.3f}", file=sys.stderr)
    print(f"one query, {n_t} candidates: {cold:.3f} s cold, {warm:.3f} s warm (CPU time {cold_cpu:.3f} s, {warm_cpu:.3f} s); "
          f"{per_image} bytes per cached image",
          file=sys.stderr)
    print_report(out, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
