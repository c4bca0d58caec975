"""Stanford Online Products Recall@k of a global-descriptor model; prints a table and JSON.

Every test image (60,502, 11,316 products) queries all the others, itself excluded;
Recall@k is the share of queries with an image of the same product among their k nearest
neighbours (k = 1, 10, 100, 1000). Without ``--checkpoint`` the model is an ImageNet
GeM baseline (``--backbone``, default EfficientNet-Lite0 with its packaged weights, no head).

The literature figures printed next to the result are the papers' own (different
backbones and training, not reproduced here):

- triplet semi-hard (FaceNet loss) and lifted structure, GoogLeNet: as reported by
  Song et al., "Deep Metric Learning via Facility Location", CVPR 2017;
- proxy-NCA, BN-Inception: Movshovitz-Attias et al., "No Fuss Distance Metric Learning
  using Proxies", ICCV 2017 (R@1 only here);
- margin loss with distance-weighted sampling, ResNet-50: Wu et al., "Sampling Matters in
  Deep Embedding Learning", ICCV 2017.

Example::

    lit train-global --root data/Stanford_Online_Products --out sop.pt --pretrained --epochs 20
    python benchmarks/sop.py --root data/Stanford_Online_Products --checkpoint sop.pt --json sop.json
"""

from __future__ import annotations

import argparse
import json
import sys

from lit.cli import evaluate_global
from lit.metric import DEFAULT_KS, evaluate_dataset

#: Published SOP Recall@k (%), keyed by method, then k.
REFERENCES: dict[str, dict[int, float]] = {
    "triplet semi-hard (Song et al. 2017)": {1: 66.7, 10: 82.4, 100: 91.9},
    "lifted structure (Song et al. 2017)": {1: 62.5, 10: 80.8, 100: 91.9},
    "proxy-NCA (Movshovitz-Attias et al. 2017)": {1: 73.7},
    "margin (Wu et al. 2017)": {1: 72.7, 10: 86.2, 100: 93.8},
}


def format_table(recall: dict[int, float], name: str = "this model") -> str:
    """Recall@k table (%): the model's row, then the references; ``-`` where not reported."""
    ks = sorted(set(recall) | set(DEFAULT_KS))
    width = max(len(name), *(len(m) for m in REFERENCES)) + 2
    lines = [f"{'method':<{width}}" + "".join(f"{'R@' + str(k):>9}" for k in ks)]
    rows = [(name, {k: 100.0 * v for k, v in recall.items()})] + list(REFERENCES.items())
    for method, values in rows:
        cells = "".join(f"{values[k]:9.1f}" if k in values else f"{'-':>9}" for k in ks)
        lines.append(f"{method:<{width}}{cells}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    evaluate_global.add_arguments(parser)  # the options of `lit evaluate-global`
    args = parser.parse_args(argv)
    result = evaluate_dataset(args.root, kind=args.dataset, split=args.split, checkpoint=args.checkpoint,
                              backbone=args.backbone, pretrained=not args.no_pretrained, image_size=args.image_size,
                              ks=args.ks, batch_size=args.batch_size, workers=args.workers, device=args.device,
                              backend=args.backend, chunk_size=args.chunk_size)
    recall = {int(k): v for k, v in result["recall"].items()}
    label = "this model" if args.checkpoint else f"{result['model']['backbone']} ImageNet GeM"
    print(f"Stanford Online Products ({result['dataset']['split']}): {result['dataset']['images']} images, "
          f"{result['dataset']['classes']} classes; extraction {result['seconds']['extract']:.1f} s, "
          f"kNN {result['seconds']['knn']:.1f} s")
    print(format_table(recall, label))
    result["references"] = {m: {str(k): v for k, v in r.items()} for m, r in REFERENCES.items()}
    text = json.dumps(result, indent=1)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
