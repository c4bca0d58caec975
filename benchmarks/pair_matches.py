"""Super-feature matches (``lit.match``) between photos of the same scene and of different
scenes, for one or more models, under each model's match rule. Prints JSON.

Every scene folder of ``--root`` gives its photo pairs (positives); the negatives are all
pairs of photos of different scenes. A pair "matches" when it has at least one match.

    python benchmarks/pair_matches.py                                   # bundled photo pairs
    python benchmarks/pair_matches.py --root ../shared/data/multiview --scenes held-out
    python benchmarks/pair_matches.py --root ../shared/data/multiview --scenes training --calibrate

The rule defaults to each model's own (``model.match_rule()``: FIRe's cosine >= 0.9;
lit-effl0's background test, weights/README.md); ``--threshold`` / ``--margin`` replace its
parts (``--margin none``: no background test). The background super-features of photos of
a pair's own scenes are left out for that pair (a user's photos are never in the
background; lit-effl0's background holds only training scenes, so this matters only with
``--scenes training``). ``--calibrate`` sweeps the margin (0.000..0.300 by 0.005; the
threshold for a model without background, 0.50..1.00 by 0.01) and, among the values at
which at most ``--max-false`` of the different-scene pairs match, picks the one with the
largest difference between the matched fractions of same-scene and different-scene pairs
(Youden's J): that is how lit-effl0's rule (in its weights file) was chosen, on its training scenes
(``--scenes training``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent / "lit" / "assets" / "photos"


def background_rows(model) -> tuple[np.ndarray | None, list[str]]:
    """Photo id of each background row and the photos' names (``scene/file``), if the
    model's weights file records them (its meta ``match_background``)."""
    prov = getattr(model, "meta", {}).get("match_background")
    bank = getattr(model, "match_background", None)
    if prov and bank is not None and sum(prov["rows"]) == len(bank):
        return np.repeat(np.arange(len(prov["photos"])), prov["rows"]), list(prov["photos"])
    return None, []


def pair_candidates(feats: list, pairs: list[tuple[int, int]], scenes: list[str], rule, bg_scene) -> list[np.ndarray]:
    """For each pair: (cosine, background margin) of its reciprocal nearest neighbours (no
    threshold), shape (M, 2); the margin is ``nan`` without background. Background rows of
    the pair's own scenes are left out."""
    import torch

    import lit
    from lit.matching import background_similarity

    out = []
    for i, j in pairs:
        m = lit.match(feats[i], feats[j], threshold=None)
        sim = m.similarity.cpu().numpy()
        marg = np.full(len(sim), np.nan)
        if rule.background is not None and len(sim):
            bg = rule.background
            if bg_scene is not None:
                bg = bg[torch.from_numpy(~np.isin(bg_scene, [scenes[i], scenes[j]]))]
            da = feats[i].descriptors[m.indices_a].float()
            db = feats[j].descriptors[m.indices_b].float()
            best = torch.maximum(background_similarity(da, bg), background_similarity(db, bg))
            marg = sim - best.cpu().numpy()
        out.append(np.stack([sim, marg], 1) if len(sim) else np.zeros((0, 2)))
    return out


def count(cands: np.ndarray, threshold: float | None, margin: float | None) -> int:
    keep = np.ones(len(cands), bool)
    if threshold is not None:
        keep &= cands[:, 0] >= threshold
    if margin is not None:
        keep &= cands[:, 1] >= margin
    return int(keep.sum())


def fractions(cands: list[np.ndarray], threshold, margin, min_matches: int = 1) -> tuple[float, list[int]]:
    counts = [count(c, threshold, margin) for c in cands]
    return float(np.mean([c >= min_matches for c in counts])) if counts else float("nan"), counts


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default=str(ROOT), help="folder with one sub-folder per scene")
    p.add_argument("--scenes", default="all", help="all, held-out / training (lit-effl0's split), or comma-separated")
    p.add_argument("--models", default="lit-effl0", help="comma-separated registered names or checkpoint paths")
    p.add_argument("--threshold", default="model", help="cosine floor: a number, none, or model (default: each model's own)")
    p.add_argument("--margin", default="model", help="background margin: a number, none, or model (default: each model's own)")
    p.add_argument("--calibrate", action="store_true", help="sweep thresholds and pick one (see above)")
    p.add_argument("--max-false", type=float, default=0.05, help="--calibrate: largest fraction of matching different-scene pairs")
    p.add_argument("--device", default="cpu")
    p.add_argument("--features", help="a feature file `lit extract` made of these photos with the model's defaults "
                   "(names relative to --root): skips the extraction (one model only)")
    args = p.parse_args(argv)
    import lit
    from lit._image import load_image
    from lit.bench.multiview import LIT_EFFL0_HELD_OUT, scene_images

    def option(v):
        return v if v == "model" else None if v == "none" else float(v)

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
    scene_names = [names[k] for k in labels]
    for name in args.models.split(","):
        model = lit.load_model(name, device=args.device)
        rule = model.match_rule(option(args.threshold), option(args.margin))
        rows, bg_names = background_rows(model)
        bg_scene = None if rows is None else np.array([bg_names[r].split("/")[0] for r in rows])
        if args.features:
            from lit.features import FeatureStore

            with FeatureStore(args.features) as st:
                row = {n: i for i, n in enumerate(st.names)}
                feats = [st[row[os.path.relpath(q, args.root)]] for q in paths]
        else:
            feats = [model.extract(load_image(q, model.cfg.runtime.image_size).to(args.device)) for q in paths]
        c_same = pair_candidates(feats, same, scene_names, rule, bg_scene)
        c_other = pair_candidates(feats, other, scene_names, rule, bg_scene)
        f_same, n_same = fractions(c_same, rule.threshold, rule.margin)
        f_other, n_other = fractions(c_other, rule.threshold, rule.margin)
        res = {"rule": rule.describe(), "threshold": rule.threshold, "margin": rule.margin,
               "same_scene_matched": f_same, "other_scene_matched": f_other,
               "same_scene_matched_pairs": f"{sum(c > 0 for c in n_same)}/{len(n_same)}",
               "other_scene_matched_pairs": f"{sum(c > 0 for c in n_other)}/{len(n_other)}",
               "same_scene_counts": {f"{names[labels[i]]}/{Path(paths[i]).name}~{Path(paths[j]).name}": c
                                     for (i, j), c in zip(same, n_same)},
               "other_scenes_matched": {f"{names[labels[i]]}/{Path(paths[i]).name}~{names[labels[j]]}/{Path(paths[j]).name}": c
                                        for (i, j), c in zip(other, n_other) if c},
               "other_scenes_mean": float(np.mean(n_other)) if n_other else 0.0,
               "other_scenes_max": int(max(n_other)) if n_other else 0}
        if args.calibrate:
            if rule.background is not None:
                what, grid = "margin", np.round(np.arange(0.0, 0.3001, 0.005), 3)
                table = {f"{t:.3f}": (fractions(c_same, rule.threshold, t)[0], fractions(c_other, rule.threshold, t)[0])
                         for t in grid}
            else:
                what, grid = "threshold", np.round(np.arange(0.50, 1.0001, 0.01), 2)
                table = {f"{t:.3f}": (fractions(c_same, t, None)[0], fractions(c_other, t, None)[0]) for t in grid}
            ok = [t for t in grid if table[f"{t:.3f}"][1] <= args.max_false]
            # most same-scene pairs matched minus different-scene pairs matched (Youden's J)
            best = max(ok, key=lambda t: table[f"{t:.3f}"][0] - table[f"{t:.3f}"][1]) if ok else None
            res["calibration"] = {"parameter": what, "max_false": args.max_false,
                                  "chosen": None if best is None else float(best), "table (same, other)": table}
        out["models"][name] = res
        print(f"{name} ({rule.describe()}): {100 * f_same:.0f} % of {len(same)} same-scene pairs match, "
              f"{100 * f_other:.1f} % of {len(other)} other-scene pairs"
              + (f"; calibrated {res['calibration']['parameter']} {res['calibration']['chosen']}" if args.calibrate else ""),
              file=sys.stderr)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
