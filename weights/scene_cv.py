"""Inner 2-fold scene cross-validation: how ``lit-effl0`` recipes were compared.

The held-out scenes of ``make_lit_effl0.py`` are the final test and are never used here.
The training scenes are split into two folds (alternate scenes in sorted order); a recipe is
trained on one fold and scored on the real photo pairs of the other (every photo a query,
ASMK binary, codebook of 512 words learned on the training fold's photos as in
``benchmarks/multiview.py``, mean over k-means seeds), then the other way round. The two folds train at the same time, one thread each.

    python weights/make_lit_effl0.py --prepare-only       # the training-scene folder
    python weights/scene_cv.py NAME [--set KEY=VALUE ...]  # e.g. --set optim.epochs=10

Prints one JSON line: mAP per fold and their mean weighted by queries (``cv_map``).
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

REPO = Path(__file__).resolve().parent.parent


def folds(data: Path) -> dict[str, list[str]]:
    scenes = sorted(p.name for p in data.iterdir() if p.is_dir())
    return {"A": scenes[0::2], "B": scenes[1::2]}


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
    from lit._image import load_image
    from lit.asmk import ASMK
    from lit.bench.multiview import retrieval_metrics, scene_images

    def extract(paths):
        return [model.extract(load_image(p, model.cfg.runtime.image_size)) for p in paths]

    paths, labels, _ = scene_images(data, scenes)
    feats = extract(paths)
    desc = torch.cat([f.descriptors for f in feats])
    ids = torch.cat([torch.full((len(f),), i) for i, f in enumerate(feats)])
    train = torch.cat([f.descriptors for f in extract(scene_images(data, codebook_scenes)[0])])
    maps = []
    for seed in range(seeds):
        index = ASMK.train(train, size=words, seed=seed, iterations=15)
        index.add(desc, ids)
        maps.append(retrieval_metrics(np.asarray(index.scores(desc, ids)), labels)["map"])
    return float(np.mean(maps)), len(labels)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", help="run name: outputs go to runs/cv-NAME-{A,B}")
    p.add_argument("--config", default=str(REPO / "configs" / "lit_effl0.yaml"))
    p.add_argument("--data", default=str(REPO / "runs" / "lit-effl0-data"), help="training-scene folder")
    p.add_argument("--set", action="append", default=[], help="config override, as for `lit train`")
    args = p.parse_args(argv)
    import lit

    data = Path(args.data)
    split = folds(data)
    other = {"A": "B", "B": "A"}
    procs = []
    for f in "AB":
        out = REPO / "runs" / f"cv-{args.name}-{f}"
        if (out / "model.pt").exists():
            continue
        root = fold_folder(data, split[f], REPO / "runs" / f"cv-data-{f}")
        cmd = [sys.executable, "-m", "lit", "train", "--config", args.config, "--out", str(out),
               "--set", f"data.root={root}", "--set", "data.val_images=0"]
        for s in args.set:
            cmd += ["--set", s]
        env = dict(os.environ, OMP_NUM_THREADS="1")
        procs.append(subprocess.Popen(cmd, env=env, stdout=open(f"{out}.log", "w"), stderr=subprocess.STDOUT))
    if any(proc.wait() for proc in procs):
        print("a fold's training failed: see runs/cv-NAME-*.log", file=sys.stderr)
        return 1
    result = {}
    for f in "AB":
        model = lit.load_model(str(REPO / "runs" / f"cv-{args.name}-{f}" / "model.pt"))
        result[other[f]] = score_fold(model, data, split[other[f]], codebook_scenes=split[f])
    queries = sum(n for _, n in result.values())
    cv_map = sum(m * n for m, n in result.values()) / queries
    print(json.dumps({"name": args.name, "set": args.set, "folds": result, "cv_map": round(cv_map, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
