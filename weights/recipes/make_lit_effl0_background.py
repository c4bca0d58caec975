"""Give ``weights/lit-effl0.safetensors`` its match rule: the background test and its bank.

``lit match`` keeps a reciprocal super-feature pair only if it is more similar, by a
calibrated margin, than either super-feature is to anything in unrelated photos (the
background test of :func:`lit.matching.match_superfeatures`). The background is the
super-features (default extraction) of the photos of lit-effl0's training scenes, except
the held-out scenes (never seen) and the scenes of the bundled photos in
``lit/assets/photos`` (their pairs are matched by the demo and the README: a background
holding the same place would reject their matches).

The bank (M x 128, as extracted, not normalised; float16 like the weights) is stored in the
model's own file, as its ``match_background`` tensor, with the rule in its config
(``match``: no cosine floor, margin ``--margin``), so that the rule travels with the model;
the file's meta ``match_background`` records the photos (``scene/file``) and the rows of
each, in order, so that a calibration can leave a pair's own scenes out
(``benchmarks/pair_matches.py``). The margin was calibrated with that script
(``--calibrate --scenes training``, weights/README.md).

    python weights/recipes/make_lit_effl0_background.py    # prints the sha256 for registry.json
    python weights/recipes/make_lit_effl0_background.py --features all.h5   # from `lit extract` output
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from lit.bench.multiview import LIT_EFFL0_HELD_OUT as HELD_OUT

REPO = Path(__file__).resolve().parents[2]

ASSET_SCENES = ("charlottenburg", "sacre_coeur", "street", "terrace", "warsaw", "zanky")


def background_scenes(multiview: Path) -> list[Path]:
    """Training scenes that share no place with the bundled photos (folder names contain
    the asset scene's name, e.g. ``wxbs-wglbs-warsaw``)."""
    return [p for p in sorted(multiview.iterdir())
            if p.is_dir() and p.name not in HELD_OUT and not any(a in p.name for a in ASSET_SCENES)]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--multiview", default=str(REPO.parent / "shared" / "data" / "multiview"))
    p.add_argument("--model", default=str(REPO / "weights" / "lit-effl0.safetensors"))
    p.add_argument("--margin", type=float, default=0.1, help="the background test's margin (calibrated)")
    p.add_argument("--out", default=None, help="where to write the model with its rule (default: --model itself)")
    p.add_argument("--features", help="a feature file of the multi-view photos made by `lit extract` with the model's "
                   "defaults (names relative to --multiview) instead of extracting them again")
    args = p.parse_args(argv)
    import torch

    import lit
    from lit._image import load_image

    desc, image, names = [], [], []
    wanted = [f"{scene.name}/{img.name}" for scene in background_scenes(Path(args.multiview))
              for img in sorted(q for q in scene.iterdir() if q.suffix.lower() in (".jpg", ".jpeg", ".png"))]
    if args.features:
        from lit.features import FeatureStore

        with FeatureStore(args.features) as st:
            row = {n: i for i, n in enumerate(st.names)}
            missing = [n for n in wanted if n not in row]
            if missing:
                raise SystemExit(f"{args.features}: no features of {missing[0]} (and {len(missing) - 1} more)")
            for n in wanted:
                desc.append(st[row[n]].descriptors.float().numpy().astype(np.float16))
                image.append(np.full(len(desc[-1]), len(names), dtype=np.int32))
                names.append(n)
    model = None if args.features else lit.load_model(args.model)
    for scene in [] if args.features else background_scenes(Path(args.multiview)):
        for img in sorted(q for q in scene.iterdir() if q.suffix.lower() in (".jpg", ".jpeg", ".png")):
            with torch.inference_mode():
                f = model.extract(load_image(img, model.cfg.runtime.image_size))
            desc.append(f.descriptors.float().cpu().numpy().astype(np.float16))
            image.append(np.full(len(f.descriptors), len(names), dtype=np.int32))
            names.append(f"{scene.name}/{img.name}")
    from lit._fileio import file_sha256
    from lit.matching import MatchRule
    from lit.models import save_checkpoint

    model = lit.load_model(args.model)
    rows = [len(d) for d in desc]
    model.set_match_rule(MatchRule(threshold=None, margin=args.margin,
                                   background=torch.from_numpy(np.concatenate(desc).astype(np.float32))))
    meta = dict(model.meta)
    meta["match_background"] = {"photos": names, "rows": rows, "note": (
        "super-features (default extraction) of these training photos of lit-effl0, rows in this order; "
        "made by weights/recipes/make_lit_effl0_background.py")}
    out = args.out or args.model
    save_checkpoint(model, out, meta=meta, half=True)
    print(f"{out}: background of {sum(rows)} super-features of {len(names)} photos "
          f"({len({n.split('/')[0] for n in names})} scenes), margin {args.margin}; sha256 {file_sha256(out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
