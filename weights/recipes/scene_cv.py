"""Inner 2-fold scene cross-validation: how ``lit-effl0`` recipes were compared.

The held-out scenes of ``make_lit_effl0.py`` are the final test and are never used here.
The training scenes are split into two folds (alternate scenes in sorted order); a recipe is
trained on one fold and scored on the real photo pairs of the other (every photo a query,
ASMK binary, codebook of 512 words learned on the training fold's photos as in
``benchmarks/multiview.py``, mean over k-means seeds), then the other way round. With
``--folds K`` each of K parts is scored by a model trained on the other K - 1. Trainings
run ``--jobs`` at a time, one thread each.

    python weights/recipes/make_lit_effl0.py --prepare-only       # the training-scene folder
    python weights/recipes/scene_cv.py NAME [--set KEY=VALUE ...]  # e.g. --set optim.epochs=10
    python weights/recipes/scene_cv.py NAME --folds 3 --gem          # 3 folds, GeM on the same folds

Prints one JSON line: mAP per fold (keyed by the run's suffix) and their mean weighted by
queries (``cv_map``; ``gem_cv_map`` with ``--gem``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]


def folds(data: Path, k: int = 2) -> list[tuple[str, list[str], list[str]]]:
    """``(run suffix, training scenes, test scenes)`` of each of ``k`` folds (scene ``i`` of the
    sorted list goes to part ``i % k``). For ``k = 2`` the runs are named after their training
    part (``A`` trains on part A and is scored on part B), as in the model card."""
    scenes = sorted(p.name for p in data.iterdir() if p.is_dir())
    if not 2 <= k <= len(scenes):
        raise ValueError(f"{data}: {len(scenes)} scenes cannot make {k} folds")
    parts = [scenes[i::k] for i in range(k)]
    if k == 2:
        return [("A", parts[0], parts[1]), ("B", parts[1], parts[0])]
    return [(f"{k}fold{i}", [x for j, part in enumerate(parts) if j != i for x in part], parts[i]) for i in range(k)]


def fold_folder(data: Path, scenes: list[str], dst: Path) -> Path:
    """A training folder with only ``scenes`` (real sub-folders of file links)."""
    if not dst.exists():
        for scene in scenes:
            (dst / scene).mkdir(parents=True)
            for img in sorted((data / scene).iterdir()):
                os.symlink(img.resolve(), dst / scene / img.name)
    return dst


def score_fold(model, data: Path, scenes: list[str], codebook_scenes: list[str], seeds: int = 4,
               words: int = 512) -> tuple[float, int]:
    """mAP on the photos of ``scenes``, the codebook learned on those of ``codebook_scenes``."""
    from lit.asmk import ASMK
    from lit.bench.multiview import extract_all, retrieval_metrics, scene_images

    paths, labels, _ = scene_images(data, scenes)
    feats = extract_all(model, paths)
    desc = torch.cat([f.descriptors for f in feats])
    ids = torch.cat([torch.full((len(f),), i) for i, f in enumerate(feats)])
    train = torch.cat([f.descriptors for f in extract_all(model, scene_images(data, codebook_scenes)[0])])
    maps = []
    for seed in range(seeds):
        index = ASMK.train(train, size=words, seed=seed, iterations=15)
        index.add(desc, ids)
        maps.append(retrieval_metrics(np.asarray(index.scores(desc, ids)), labels)["map"])
    return float(np.mean(maps)), len(labels)


def gem_fold(data: Path, scenes: list[str]) -> float:
    """mAP of the GeM baseline of ``benchmarks/multiview.py`` (dilated ImageNet Lite0) on ``scenes``."""
    from lit.bench.multiview import gem_scores, retrieval_metrics, scene_images

    paths, labels, _ = scene_images(data, scenes)
    return retrieval_metrics(gem_scores(paths, "cpu", output_stride=16), labels)["map"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", help="run name: outputs go to runs/cv-NAME-<fold>")
    p.add_argument("--config", default=str(REPO / "configs" / "lit_effl0.yaml"))
    p.add_argument("--data", default=str(REPO / "runs" / "lit-effl0-data"), help="training-scene folder")
    p.add_argument("--set", action="append", default=[], help="config override, as for `lit train`")
    p.add_argument("--folds", type=int, default=2, help="number of scene folds")
    p.add_argument("--jobs", type=int, default=2, help="trainings at a time (one thread each)")
    p.add_argument("--gem", action="store_true", help="also score the GeM baseline on the same folds")
    args = p.parse_args(argv)
    import lit

    data = Path(args.data)
    plan = folds(data, args.folds)
    todo = []
    for suffix, train, _ in plan:
        out = REPO / "runs" / f"cv-{args.name}-{suffix}"
        if (out / "model.pt").exists():
            continue
        root = fold_folder(data, train, REPO / "runs" / f"cv-data-{suffix}")
        cmd = [sys.executable, "-m", "lit", "train", "--config", args.config, "--out", str(out),
               "--set", f"data.root={root}", "--set", "data.val_images=0"]
        for s in args.set:
            cmd += ["--set", s]
        todo.append((cmd, out))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for i in range(0, len(todo), args.jobs):
        procs = [subprocess.Popen(cmd, env=env, stdout=open(f"{out}.log", "w"), stderr=subprocess.STDOUT)
                 for cmd, out in todo[i:i + args.jobs]]
        if any(proc.wait() for proc in procs):
            print("a fold's training failed: see runs/cv-NAME-*.log", file=sys.stderr)
            return 1
    result, gem = {}, {}
    for suffix, train, test in plan:
        model = lit.load_model(str(REPO / "runs" / f"cv-{args.name}-{suffix}" / "model.pt"))
        result[suffix] = score_fold(model, data, test, codebook_scenes=train)
        if args.gem:
            gem[suffix] = gem_fold(data, test)
    queries = sum(n for _, n in result.values())
    cv_map = sum(m * n for m, n in result.values()) / queries
    line = {"name": args.name, "set": args.set, "folds": result, "cv_map": round(cv_map, 1)}
    if args.gem:
        line["gem_cv_map"] = round(sum(gem[f] * result[f][1] for f in gem) / queries, 1)
    print(json.dumps(line))
    return 0


if __name__ == "__main__":
    sys.exit(main())
