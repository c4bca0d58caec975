"""Build ``weights/lit-effl0.background.npz``: the background set of lit-effl0's match rule.

``lit match`` keeps a reciprocal super-feature pair only if it is more similar, by a
calibrated margin, than either super-feature is to anything in unrelated photos (the
background test of :func:`lit.matching.match_superfeatures`). The background is the
super-features (default extraction) of the photos of lit-effl0's training scenes, except
the held-out scenes (never seen) and the scenes of the bundled photos in
``lit/assets/photos`` (their pairs are matched by the demo and the README: a background
holding the same place would reject their matches).

The file (``numpy.savez``, read with ``allow_pickle=False``) holds ``descriptors``
(M x 128 float16, as extracted, not normalised), ``image`` (M,) int32, row -> photo, and
``names`` (photos, ``scene/file``), so that a calibration can leave a pair's own scenes out.

    python weights/make_lit_effl0_background.py      # prints the sha256 for registry.json
    python weights/make_lit_effl0_background.py --features all.h5   # from `lit extract` output
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "weights"))
from make_lit_effl0 import HELD_OUT  # noqa: E402

ASSET_SCENES = ("charlottenburg", "sacre_coeur", "street", "terrace", "warsaw", "zanky")


def background_scenes(multiview: Path) -> list[Path]:
    """Training scenes that share no place with the bundled photos (folder names contain
    the asset scene's name, e.g. ``wxbs-wglbs-warsaw``)."""
    return [p for p in sorted(multiview.iterdir())
            if p.is_dir() and p.name not in HELD_OUT and not any(a in p.name for a in ASSET_SCENES)]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--multiview", default=str(REPO.parent / "shared" / "data" / "multiview"))
    p.add_argument("--model", default="lit-effl0")
    p.add_argument("--out", default=str(REPO / "weights" / "lit-effl0.background.npz"))
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
    np.savez(args.out, descriptors=np.concatenate(desc), image=np.concatenate(image), names=np.array(names))
    sha = hashlib.sha256(Path(args.out).read_bytes()).hexdigest()
    print(f"{args.out}: {sum(len(d) for d in desc)} super-features of {len(names)} photos "
          f"({len({n.split('/')[0] for n in names})} scenes); sha256 {sha}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
