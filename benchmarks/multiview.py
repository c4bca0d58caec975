"""Retrieval on a folder-per-scene photo set (the multi-view scenes beside the repository by
default): every image is a query, its positives are the other photos of its scene folder.
Prints a table of mAP and Recall@1, and JSON. The models and the codebook protocol are
described in :mod:`lit.bench.multiview`.

    python benchmarks/multiview.py --scenes terrace,wxbs-wgabs-petrzin,... --seeds 8
"""

import argparse
import sys
import time

import numpy as np
import torch

from lit.bench import print_report
from lit.bench.multiview import (
    ALL,
    DEFAULT_ROOT,
    GEM_OUTPUT_STRIDE,
    UNTRAINED,
    asmk_scores,
    codebook_photos,
    extract_all,
    gem_scores,
    kmeans_init_on,
    paired_comparison,
    retrieval_metrics,
    scene_images,
    superfeature_model,
    whiten_on,
)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default=str(DEFAULT_ROOT), help="folder with one sub-folder per scene")
    p.add_argument("--scenes", default=None, help="comma-separated scene folders to use (default: all)")
    p.add_argument("--exclude", default=None, help="comma-separated scene folders to leave out (e.g. training scenes)")
    p.add_argument("--models", default=",".join(ALL), help=f"comma-separated: {', '.join(ALL)} or checkpoint paths")
    p.add_argument("--codebook-size", type=int, default=None,
                   help="codebook words (default: lit.pipeline.codebook_size, the policy of `lit index`)")
    p.add_argument("--codebook", default="auto",
                   help="photos the codebook is learned on: auto, rest, reference, evaluated or a folder (see above)")
    p.add_argument("--seeds", type=int, default=5, help="k-means seeds averaged over (small sets are noisy)")
    p.add_argument("--compare", default="lit-effl0", help="model compared query by query with every other one")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    import lit
    from lit.pipeline import extract_to_file  # noqa: F401  (keeps the import cost out of timings)

    paths, labels, scenes = scene_images(args.root, args.scenes.split(",") if args.scenes else None)
    if args.exclude:
        keep = ~np.isin(np.array(scenes)[labels], args.exclude.split(","))
        paths, labels = [p_ for p_, k in zip(paths, keep) if k], labels[keep]
    print(f"{len(paths)} images of {len(set(labels.tolist()))} scenes from {args.root}", file=sys.stderr)
    cb_paths, cb_what = codebook_photos(args.codebook, args.root, paths)
    print(f"codebook (and whitening of untrained models) learned on {cb_what}", file=sys.stderr)
    results = {}
    for name in args.models.split(","):
        if name == "lit-effl0" and "lit-effl0" not in lit.list_models():
            print("lit-effl0 is not installed: skipped", file=sys.stderr)
            continue
        t = time.perf_counter()
        if name in GEM_OUTPUT_STRIDE:
            scores = gem_scores(paths, args.device, output_stride=GEM_OUTPUT_STRIDE[name])
        else:
            model = superfeature_model(name, args.device)
            if name == "effl0-kmeans":
                kmeans_init_on(model, cb_paths, args.device)
            if name in UNTRAINED:
                whiten_on(model, cb_paths, args.device)
            feats = extract_all(model, paths)
            cb_feats = None if cb_paths == paths else extract_all(model, cb_paths)
            scores = [asmk_scores(feats, args.codebook_size, seed=s, codebook_feats=cb_feats) for s in range(args.seeds)]
        if isinstance(scores, list):  # several k-means codebooks: mean and spread
            runs = [retrieval_metrics(s, labels) for s in scores]
            res = {k: float(np.mean([r[k] for r in runs])) for k in ("map", "recall@1")}
            res["ap"] = np.mean([r["ap"] for r in runs], axis=0).tolist()
            res.update({"map_std": float(np.std([r["map"] for r in runs])), "queries": runs[0]["queries"], "codebook_seeds": len(runs)})
        else:
            res = retrieval_metrics(scores, labels)
        res["seconds"] = time.perf_counter() - t
        results[name] = res
        spread = f" +- {res['map_std']:.1f}" if "map_std" in res else ""
        print(f"{name}: mAP {res['map']:.1f}{spread}, R@1 {res['recall@1']:.1f} ({res['seconds']:.0f} s)", file=sys.stderr)
    print(f"\n{'model':24s} {'mAP':>6s} {'(std)':>6s} {'R@1':>6s}")
    for name, r in results.items():
        std = f"{r['map_std']:6.1f}" if "map_std" in r else f"{'':6s}"
        print(f"{name:24s} {r['map']:6.1f} {std} {r['recall@1']:6.1f}")
    comparisons = {}
    if args.compare in results:
        with_pos = np.array([(labels == labels[q]).sum() > 1 for q in range(len(labels))])
        for name in results:
            if name != args.compare:
                c = paired_comparison(results[args.compare]["ap"], results[name]["ap"], labels[with_pos])
                comparisons[f"{args.compare} - {name}"] = c
        print(f"\n{args.compare} against each model, per query (95 % interval: bootstrap over scenes):")
        for key, c in comparisons.items():
            print(f"  {key:40s} {c['map_difference']:+6.1f} mAP [{c['ci95'][0]:+.1f}, {c['ci95'][1]:+.1f}], "
                  f"better on {c['better']}, same on {c['same']}, worse on {c['worse']} queries")
    out = {"root": str(args.root), "images": len(paths), "scenes": int(len(set(labels.tolist()))),
           "codebook": cb_what, "codebook_images": len(cb_paths), "results": results, "comparisons": comparisons}
    print_report(out, args.json)
    return 0




if __name__ == "__main__":
    sys.exit(main())
