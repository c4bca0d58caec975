"""Live collections on real photos: index part of the multi-view scenes, ``lit add`` the rest,
and compare every search with an index rebuilt from scratch with the same codebook; then
``lit search --text`` on the grown index.

Steps (the shipped model and text model, CPU, the command line as a user runs it):

1. ``lit extract`` the photos of the first ``--base-scenes`` scenes (names relative to the
   data folder), ``lit index`` them (codebook learned on them);
2. ``lit add INDEX`` the folders of the other scenes (extracted with the index's model and
   settings, quantised with its codebook; text embeddings added);
3. ``lit extract`` every photo again into one file and ``lit index --codebook INDEX`` it;
4. every photo as a query against both indexes: same ranked names, scores within 1e-5
   (relative), and the mAP of each (a query's positives: the other photos of its scene);
5. ``lit search INDEX --text`` with each added scene's name: where its first photo ranks.

Usage::

    python benchmarks/live_multiview.py [--data /work/shared/data/multiview] [--image-size 512]

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
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
    p.add_argument("--base-scenes", type=int, default=8)
    p.add_argument("--image-size", type=int, default=512, help="extraction setting recorded in the index (`lit add` "
                   "uses it)")
    args = p.parse_args()
    scenes = sorted(d for d in os.listdir(args.data) if os.path.isdir(os.path.join(args.data, d)))
    base, added = scenes[: args.base_scenes], scenes[args.base_scenes :]
    out: dict = {"benchmark": "live_multiview", "base_scenes": base, "added_scenes": added}
    with tempfile.TemporaryDirectory() as tmp:
        feats, index = os.path.join(tmp, "base.h5"), os.path.join(tmp, "index.h5")
        t = time.perf_counter()
        lit("extract", *[os.path.join(args.data, s) for s in base], "--root", args.data, "--out", feats,
            "--image-size", args.image_size, "--device", "cpu", "--quiet")
        lit("index", feats, "--out", index, "--device", "cpu")
        out["base_seconds"] = time.perf_counter() - t
        t = time.perf_counter()
        added_log = lit("add", index, *[os.path.join(args.data, s) for s in added], "--device", "cpu", "--quiet")
        out["add_seconds"] = time.perf_counter() - t
        out["add_output"] = (added_log.stdout + added_log.stderr).strip().splitlines()[-3:]
        from lit.index_file import read_info

        names = list(read_info(index).names)
        out["images"] = len(names)
        every, ref = os.path.join(tmp, "all.h5"), os.path.join(tmp, "ref.h5")
        listing = os.path.join(tmp, "all.txt")
        with open(listing, "w") as f:
            f.write("\n".join(os.path.join(args.data, n) for n in names) + "\n")
        t = time.perf_counter()
        lit("extract", "--list", listing, "--root", args.data, "--out", every, "--image-size", args.image_size,
            "--device", "cpu", "--quiet")
        lit("index", every, "--out", ref, "--codebook", index, "--device", "cpu")
        out["rebuild_seconds_incl_extraction"] = time.perf_counter() - t
        grown, scratch = results(index, every), results(ref, every)
        same_ranks = all([h.name for h in grown[q]] == [h.name for h in scratch[q]] for q in scratch)
        rel = max(abs(a.score - b.score) / max(abs(b.score), 1e-12)
                  for q in scratch for a, b in zip(grown[q], scratch[q], strict=True))
        out["identical_ranks"] = bool(same_ranks)
        out["max_relative_score_difference"] = rel
        out["map_grown"] = float(np.nanmean([average_precision(grown[q], q) for q in grown]))
        out["map_rebuilt"] = float(np.nanmean([average_precision(scratch[q], q) for q in scratch]))
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
