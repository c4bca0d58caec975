"""Super-feature matches (``lit.match``, cosine >= threshold) between photos of the same
scene and of different scenes, for one or more models. Prints JSON.

Every scene folder of ``--root`` (default: the bundled photo pairs) gives its photo pairs;
the negatives are all pairs of photos of different scenes.

    python benchmarks/pair_matches.py --models lit-effl0,old.pt
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent / "lit" / "assets" / "photos"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default=str(ROOT), help="folder with one sub-folder per scene")
    p.add_argument("--models", default="lit-effl0", help="comma-separated registered names or checkpoint paths")
    p.add_argument("--threshold", type=float, default=0.9)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    import lit
    from lit._image import load_image
    from lit.bench.multiview import scene_images

    paths, labels, scenes = scene_images(args.root)
    out = {"root": args.root, "threshold": args.threshold, "models": {}}
    for name in args.models.split(","):
        model = lit.load_model(name, device=args.device)
        feats = [model.extract(load_image(q, model.cfg.runtime.image_size).to(args.device)) for q in paths]

        def count(i, j, feats=feats):
            return len(lit.match(feats[i], feats[j], threshold=args.threshold))

        same = {f"{scenes[labels[i]]}/{Path(paths[i]).name}~{Path(paths[j]).name}": count(i, j)
                for i, j in itertools.combinations(range(len(paths)), 2) if labels[i] == labels[j]}
        other = [count(i, j) for i, j in itertools.combinations(range(len(paths)), 2) if labels[i] != labels[j]]
        out["models"][name] = {"same_scene": same, "other_scenes_mean": float(np.mean(other)),
                               "other_scenes_max": int(max(other)), "other_scene_pairs": len(other)}
        print(f"{name}: same scene {list(same.values())}, other scenes mean {np.mean(other):.2f} "
              f"max {max(other)}", file=sys.stderr)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
