"""Super-feature matches (``lit.match``) between photos of the same scene and of different
scenes, for one or more models. Prints JSON.

Every scene folder of ``--root`` gives its photo pairs (positives); the negatives are all
pairs of photos of different scenes. A pair "matches" when it has at least one match.

    python benchmarks/pair_matches.py                                   # bundled photo pairs
    python benchmarks/pair_matches.py --root ../shared/data/multiview --scenes held-out
    python benchmarks/pair_matches.py --root ../shared/data/multiview --scenes training --calibrate

``--threshold`` defaults to each model's own (``lit.pipeline.match_threshold``: the registry's
calibrated value). ``--calibrate`` also sweeps thresholds (0.50..1.00 by 0.01) and, among
those at which at most ``--max-false`` of the different-scene pairs match, picks the one with
the largest difference between the matched fractions of same-scene and different-scene
pairs: that is how lit-effl0's registry threshold was chosen, on its training scenes
(``--scenes training``: 0.87).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent / "lit" / "assets" / "photos"


def pair_similarities(feats: list, pairs: list[tuple[int, int]]) -> list[np.ndarray]:
    """Cosine similarities of the reciprocal nearest-neighbour pairs (no threshold) of each pair."""
    import lit

    return [lit.match(feats[i], feats[j], threshold=None).similarity.cpu().numpy() for i, j in pairs]


def fractions(sims: list[np.ndarray], threshold: float, min_matches: int = 1) -> tuple[float, list[int]]:
    counts = [int((s >= threshold).sum()) for s in sims]
    return float(np.mean([c >= min_matches for c in counts])) if counts else float("nan"), counts


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default=str(ROOT), help="folder with one sub-folder per scene")
    p.add_argument("--scenes", default="all", help="all, held-out / training (lit-effl0's split), or comma-separated")
    p.add_argument("--models", default="lit-effl0", help="comma-separated registered names or checkpoint paths")
    p.add_argument("--threshold", type=float, default=None, help="default: each model's own")
    p.add_argument("--calibrate", action="store_true", help="sweep thresholds and pick one (see above)")
    p.add_argument("--max-false", type=float, default=0.05, help="--calibrate: largest fraction of matching different-scene pairs")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    import lit
    from lit._image import load_image
    from lit.bench.multiview import LIT_EFFL0_HELD_OUT, scene_images
    from lit.pipeline import match_threshold

    if args.scenes in ("all", "training"):
        scenes = None
    elif args.scenes == "held-out":
        scenes = list(LIT_EFFL0_HELD_OUT)
    else:
        scenes = args.scenes.split(",")
    paths, labels, names = scene_images(args.root, scenes)
    if args.scenes == "training":
        keep = ~np.isin(np.array(names)[labels], LIT_EFFL0_HELD_OUT)
        paths, labels = [q for q, k in zip(paths, keep) if k], labels[keep]
    pairs = list(itertools.combinations(range(len(paths)), 2))
    same = [(i, j) for i, j in pairs if labels[i] == labels[j]]
    other = [(i, j) for i, j in pairs if labels[i] != labels[j]]
    out = {"root": args.root, "scenes": args.scenes, "images": len(paths), "same_scene_pairs": len(same),
           "other_scene_pairs": len(other), "models": {}}
    for name in args.models.split(","):
        model = lit.load_model(name, device=args.device)
        thr = match_threshold(model) if args.threshold is None else args.threshold
        feats = [model.extract(load_image(q, model.cfg.runtime.image_size).to(args.device)) for q in paths]
        s_same, s_other = pair_similarities(feats, same), pair_similarities(feats, other)
        f_same, c_same = fractions(s_same, thr)
        f_other, c_other = fractions(s_other, thr)
        res = {"threshold": thr, "same_scene_matched": f_same, "other_scene_matched": f_other,
               "same_scene_counts": {f"{names[labels[i]]}/{Path(paths[i]).name}~{Path(paths[j]).name}": c
                                     for (i, j), c in zip(same, c_same)},
               "other_scenes_mean": float(np.mean(c_other)) if c_other else 0.0,
               "other_scenes_max": int(max(c_other)) if c_other else 0}
        if args.calibrate:
            grid = np.round(np.arange(0.50, 1.0001, 0.01), 2)
            table = {f"{t:.2f}": (fractions(s_same, t)[0], fractions(s_other, t)[0]) for t in grid}
            ok = [t for t in grid if table[f"{t:.2f}"][1] <= args.max_false]
            # most same-scene pairs matched minus different-scene pairs matched (Youden's J)
            best = max(ok, key=lambda t: table[f"{t:.2f}"][0] - table[f"{t:.2f}"][1]) if ok else None
            res["calibration"] = {"max_false": args.max_false, "chosen": None if best is None else float(best),
                                  "table (same, other)": table}
        out["models"][name] = res
        print(f"{name} at {thr:g}: {100 * f_same:.0f} % of {len(same)} same-scene pairs match, "
              f"{100 * f_other:.1f} % of {len(other)} other-scene pairs"
              + (f"; calibrated threshold {res['calibration']['chosen']}" if args.calibrate else ""), file=sys.stderr)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
