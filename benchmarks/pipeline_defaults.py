"""Do the command line's defaults give good retrieval? `lit extract` -> `lit index` ->
`lit search --query-features --exclude-self`, exactly as a user runs them (default model,
default codebook size, default seed), on real multi-view scenes, against a sweep of
codebook sizes. Prints JSON.

Every photo is a query, its positives are the other photos of its scene folder, the query
itself is left out (``--exclude-self``). The sweep builds the same index with
:func:`lit.pipeline.build_index` for each size and several k-means seeds (small sets vary
with the seed by several mAP, ±4-6 with 20 queries), and also the default size over the
same seeds. The comparison is of means over seeds: ``default_minus_best_seed_mean`` (the
default size's mean minus the best size's mean) and the CLI run itself (seed 0) minus the
best mean; each mean has a standard error ``map_se`` = std / sqrt(seeds), and the best of
several noisy means is biased upwards by about one standard error, so use 20 seeds or more.

    python benchmarks/pipeline_defaults.py                   # lit-effl0's 10 held-out scenes
    python benchmarks/pipeline_defaults.py --root DIR --scenes all --sizes 256,512,1024
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from lit.bench import print_report


def lit_cli(*args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "lit", *map(str, args)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"lit {' '.join(map(str, args))} failed:\n{proc.stderr}")
    return proc


def mean_ap(queries: list[dict]) -> float:
    """mAP of search results (JSON of `lit search`), positives = same scene folder."""
    from lit.evaluate import compute_ap
    from lit.pipeline import scene_of

    aps = []
    for q in queries:
        rel = np.array([scene_of(h["name"]) == scene_of(q["query"]) for h in q["results"]])
        if rel.sum():
            aps.append(compute_ap(np.flatnonzero(rel), int(rel.sum())))
    return 100 * float(np.mean(aps))


def main(argv=None) -> int:
    from lit.bench.multiview import DEFAULT_ROOT, LIT_EFFL0_HELD_OUT, scene_images

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default=str(DEFAULT_ROOT), help="folder with one sub-folder per scene")
    p.add_argument("--scenes", default="held-out", help="held-out (lit-effl0's), all, or comma-separated folders")
    p.add_argument("--sizes", default="256,512,768,1024,1536,2048", help="codebook sizes of the sweep")
    p.add_argument("--seeds", type=int, default=20, help="k-means seeds of the sweep")
    p.add_argument("--work-dir", default=None, help="keep the feature and index files here (default: temporary)")
    p.add_argument("--features", default=None, help="a feature file `lit extract` made of these photos with the "
                   "defaults (names relative to --root): skips the extraction")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    from lit.pipeline import build_index, codebook_size, results_to_dict, search

    scenes = (list(LIT_EFFL0_HELD_OUT) if args.scenes == "held-out" else
              None if args.scenes == "all" else args.scenes.split(","))
    paths, labels, names = scene_images(args.root, scenes)
    tmp = tempfile.TemporaryDirectory(prefix="lit-defaults-") if args.work_dir is None else None
    work = Path(args.work_dir or tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    feats, index, res = work / "features.h5", work / "index.h5", work / "results.json"
    if (work / "features.h5").exists() and not args.features:
        (work / "features.h5").unlink()  # a fresh extraction
    # exactly the CLI, with its defaults (model, scales, features, codebook size, seed)
    if args.features:
        feats = Path(args.features)
    else:
        lit_cli("extract", *paths, "--root", args.root, "--out", feats, "--quiet")
    index_log = lit_cli("index", feats, "--out", index).stderr
    lit_cli("search", index, "--query-features", feats, "--exclude-self", "--topk", len(paths), "--keep-unscored",
            "--json", res)
    cli_map = mean_ap(json.loads(res.read_text())["queries"])
    print(f"CLI defaults: mAP {cli_map:.1f} ({len(paths)} queries, {len(names)} scenes)", file=sys.stderr)

    from lit.features import FeatureStore

    with FeatureStore(feats) as st:
        n_desc = int(st.h5.attrs["num_features"])
        qfeats, qnames = [st[i] for i in range(len(st))], list(st.names)
    sweep = {}
    sizes = [("default", None)] + [(int(k), int(k)) for k in args.sizes.split(",") if int(k) <= n_desc // 2]
    for label, size in sizes:
        maps = []
        for seed in range(args.seeds):
            idx, info = build_index(feats, size=size, seed=seed)
            out = search(idx, info, qfeats, qnames, topk=None, exclude_self=True, keep_unscored=True)
            maps.append(mean_ap(results_to_dict(out, None, None)["queries"]))
        k = codebook_size(n_desc) if size is None else size
        sweep[str(label)] = {"size": k, "descriptors_per_word": n_desc / k, "map": float(np.mean(maps)),
                             "map_std": float(np.std(maps)), "map_se": float(np.std(maps) / np.sqrt(len(maps))),
                             "maps": maps}
        print(f"size {label} ({k}): mAP {np.mean(maps):.1f} +- {np.std(maps):.1f} (se {np.std(maps) / np.sqrt(len(maps)):.1f})",
              file=sys.stderr)
    best = max((v for key, v in sweep.items() if key != "default"), key=lambda v: v["map"])
    out = {"root": args.root, "features": str(feats), "scenes": names, "images": len(paths), "descriptors": n_desc,
           "default_size": codebook_size(n_desc), "cli_defaults_map": cli_map,
           "cli_index_log": index_log.strip().splitlines(), "default_size_seeds_map": sweep["default"]["map"],
           "best_size": best["size"], "best_size_map": best["map"],
           "default_minus_best_seed_mean": sweep["default"]["map"] - best["map"],
           "cli_defaults_minus_best_seed_mean": cli_map - best["map"],
           "within_2_map": bool(sweep["default"]["map"] >= best["map"] - 2 and cli_map >= best["map"] - 2), "sweep": sweep}
    print_report(out, args.json)
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
