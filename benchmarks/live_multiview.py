"""Live collections on real photos: index part of the multi-view scenes, add the rest, and
compare every search with an index rebuilt from scratch with the same codebook; then
``lit search --text`` on the grown index.

Steps (the shipped model and text model, CPU, the command line as a user runs it):

1. ``lit extract`` the photos of the first ``--base-scenes`` scenes (names relative to the
   data folder) and ``lit index`` them (codebook learned on them);
2. ``lit extract`` the photos of the other scenes into their own feature file;
3. two grown indexes: ``lit add INDEX --features`` that file (the same descriptors as the
   rebuild), and ``lit add INDEX FOLDERS...`` (extracted by ``lit add`` itself, with the
   index's model and settings; text embeddings added);
4. ``lit features merge`` the two feature files (base photos first, as the grown index
   numbers them) and ``lit index --codebook INDEX`` it: the rebuild;
5. every photo as a query against the three: same ranked names, and the largest relative
   score difference to the rebuild (criterion 1e-5); the mAP of each (a query's positives:
   the other photos of its scene);
6. ``lit search --text`` with each added scene's name on the index grown from folders:
   where its first photo ranks.

Usage::

    python benchmarks/live_multiview.py [--data /work/shared/data/multiview] [--image-size 512]
    python benchmarks/live_multiview.py --scenes 10 --base-scenes 6 --image-size 320 --scales 1   # quicker

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np


def lit(*args) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "lit", *map(str, args)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"lit {' '.join(map(str, args))} failed:\n{proc.stderr}")
    return proc


def results(index_path, features):
    from lit.pipeline import open_index, queries_from_features, search

    index, info = open_index(index_path)
    q = queries_from_features(features, info)
    return {r.query: r.hits for r in search(index, info, q.features, q.names, topk=None)}


def average_precision(hits, query: str) -> float:
    scene = query.split("/")[0]
    ranked = [h.name for h in hits if h.name != query]
    relevant = [n.split("/")[0] == scene for n in ranked]
    if not any(relevant):
        return float("nan")
    found, total = 0, 0.0
    for i, rel in enumerate(relevant, 1):
        if rel:
            found += 1
            total += found / i
    return total / sum(relevant)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="/work/shared/data/multiview")
    p.add_argument("--scenes", type=int, default=0, help="use the first N scenes only (0: all)")
    p.add_argument("--base-scenes", type=int, default=8)
    p.add_argument("--image-size", type=int, default=512, help="extraction setting recorded in the index (`lit add` "
                   "uses it)")
    p.add_argument("--scales", default=None, help="extraction scales recorded in the index (default: the model's)")
    args = p.parse_args()
    scales = ["--scales", args.scales] if args.scales else []
    scenes = sorted(d for d in os.listdir(args.data) if os.path.isdir(os.path.join(args.data, d)))
    scenes = scenes[: args.scenes] if args.scenes else scenes
    base, added = scenes[: args.base_scenes], scenes[args.base_scenes :]
    out: dict = {"benchmark": "live_multiview", "base_scenes": base, "added_scenes": added}
    with tempfile.TemporaryDirectory() as tmp:
        feats, added_feats, index = (os.path.join(tmp, n) for n in ("base.h5", "added.h5", "index.h5"))
        extract = ["--root", args.data, "--image-size", args.image_size, *scales, "--device", "cpu", "--quiet"]
        t = time.perf_counter()
        lit("extract", *[os.path.join(args.data, s) for s in base], "--out", feats, *extract)
        lit("index", feats, "--out", index, "--device", "cpu")
        out["base_seconds"] = time.perf_counter() - t
        lit("extract", *[os.path.join(args.data, s) for s in added], "--out", added_feats, *extract)
        grown_features = os.path.join(tmp, "grown-features.h5")
        shutil.copyfile(index, grown_features)
        t = time.perf_counter()
        lit("add", grown_features, "--features", added_feats, "--device", "cpu")
        out["add_features_seconds"] = time.perf_counter() - t
        t = time.perf_counter()
        added_log = lit("add", index, *[os.path.join(args.data, s) for s in added], "--device", "cpu", "--quiet")
        out["add_folders_seconds"] = time.perf_counter() - t
        out["add_output"] = (added_log.stdout + added_log.stderr).strip().splitlines()[-3:]
        from lit.index_file import read_info

        names = list(read_info(index).names)
        out["images"] = len(names)
        every, ref = os.path.join(tmp, "all.h5"), os.path.join(tmp, "ref.h5")
        lit("features", "merge", feats, added_feats, "--out", every)
        t = time.perf_counter()
        lit("index", every, "--out", ref, "--codebook", index, "--device", "cpu")
        out["rebuild_seconds"] = time.perf_counter() - t
        scratch = results(ref, every)
        for tag, path in (("features", grown_features), ("folders", index)):
            if list(read_info(path).names) != names:
                raise SystemExit(f"the index grown from {tag} numbers the photos in another order")
            grown = results(path, every)
            out[f"grown_from_{tag}"] = {
                "identical_ranks": all([h.name for h in grown[q]] == [h.name for h in scratch[q]] for q in scratch),
                "max_relative_score_difference": max(
                    abs(a.score - b.score) / max(abs(b.score), 1e-12)
                    for q in scratch for a, b in zip(grown[q], scratch[q], strict=True)),
                "map": float(np.nanmean([average_precision(grown[q], q) for q in grown])),
            }
        out["map_rebuilt"] = float(np.nanmean([average_precision(scratch[q], q) for q in scratch]))
        out["exact_within_1e-5"] = all(out[f"grown_from_{t}"]["identical_ranks"] and
                                       out[f"grown_from_{t}"]["max_relative_score_difference"] <= 1e-5
                                       for t in ("features", "folders"))
        text = {}
        for scene in added:
            words = scene.split("-")[-1].replace("_", " ")
            lit("search", index, "--text", f"a photo of {words}", "--topk", str(len(names)),
                "--json", os.path.join(tmp, "t.json"))
            with open(os.path.join(tmp, "t.json")) as f:
                res = json.load(f)["queries"][0]["results"]
            ranks = [h["rank"] for h in res if h["name"].startswith(scene + "/")]
            text[f"a photo of {words}"] = {"scene": scene, "first_rank": min(ranks) if ranks else None,
                                           "photos_of_scene_returned": len(ranks)}
        out["text_search_added_scenes"] = text
        out["text_search_returns_added_photos"] = all(v["photos_of_scene_returned"] > 0 for v in text.values())
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
