"""Scene CV of the backbone's raw local features, without any LIT (diagnostic of the model card).

Same folds, codebook and scoring as ``weights/recipes/scene_cv.py --folds 3``: the dilated ImageNet
Lite0 map at the 4 runtime scales, 300 features per scale, PCA-whitened to 128 (shrinkage
0.5) on the training fold, ASMK. Variants (comma-separated): ``raw_top`` / ``ln_top``: the
300 of largest raw norm, as they are / LayerNorm'd as a LIT sees them; ``raw_rand`` /
``ln_rand``: 300 random ones; ``*_all``: every feature.

    python weights/recipes/raw_feature_cv.py raw_top,ln_top,raw_rand,ln_rand
"""
import json
import sys
import zlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scene_cv import folds  # same folder: run as python weights/recipes/raw_feature_cv.py

from lit._image import load_image
from lit.asmk import ASMK
from lit.bench.multiview import retrieval_metrics, scene_images
from lit.models import SuperFeatureModel, lit_effl0_config, pca_whitening

data = Path(__file__).resolve().parents[2] / "runs" / "lit-effl0-data"  # make_lit_effl0.py --prepare-only
model = SuperFeatureModel(lit_effl0_config(), pretrained_backbone=True).eval()
SCALES = (1.414, 1.0, 0.707, 0.5)
cache = {}

@torch.inference_mode()
def tokens(path):
    if path not in cache:
        x = model.normalize(load_image(path, 512)[None])
        out = []
        for s in SCALES:
            xs = x if s == 1.0 else F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False)
            out.append(model.backbone(xs)[0].flatten(1).T)
        cache[path] = out
    return cache[path]

def select(path, variant, k=300):
    rows = []
    g = torch.Generator().manual_seed(zlib.crc32(path.encode()))
    for t in tokens(path):
        ln = F.layer_norm(t, t.shape[1:])
        feat = ln if variant.startswith("ln") else t
        if variant.endswith("all"):
            idx = torch.arange(len(t))
        elif variant.endswith("rand"):
            idx = torch.randperm(len(t), generator=g)[:k]
        else:
            idx = t.norm(dim=1).argsort(descending=True)[:k]
        rows.append(feat[idx])
    return torch.cat(rows)


def main() -> None:
    torch.set_num_threads(2)
    variants = sys.argv[1].split(",")
    res = {v: [] for v in variants}
    nq = []
    for suffix, train, test in folds(data, 3):
        paths, labels, _ = scene_images(data, test)
        tr = scene_images(data, train)[0]
        nq.append(len(labels))
        for v in variants:
            trd = torch.cat([select(p, v) for p in tr])
            w, b = pca_whitening(trd, dim=128, shrinkage=0.5)

            def red(d, w=w, b=b):
                return d @ w.T + b

            desc = [red(select(p, v)) for p in paths]
            ids = torch.cat([torch.full((len(d),), i) for i, d in enumerate(desc)])
            trr = red(trd)
            maps = []
            for seed in range(4):
                index = ASMK.train(trr, size=512, seed=seed, iterations=15)
                index.add(torch.cat(desc), ids)
                maps.append(retrieval_metrics(np.asarray(index.scores(torch.cat(desc), ids)), labels)["map"])
            res[v].append(float(np.mean(maps)))
        print(suffix, {v: round(res[v][-1], 1) for v in variants}, flush=True)
    for v in variants:
        print(json.dumps({"variant": v, "folds": [round(x, 1) for x in res[v]], "cv": round(sum(x * n for x, n in zip(res[v], nq)) / sum(nq), 1)}))


if __name__ == "__main__":
    main()
