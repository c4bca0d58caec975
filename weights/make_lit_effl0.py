"""Train and export ``lit-effl0`` (weights/lit-effl0.pt, fp16) reproducibly.

1. Prepare the training folder: the multi-view scenes of ``--multiview`` (default
   ../shared/data/multiview) except the held-out ones, plus the two landmark-pair scenes
   of ``lit/assets/photos`` (sacre_coeur joins the multiview sacre_coeur scene).
2. ``lit train --config configs/lit_effl0.yaml --out runs/lit-effl0``.
3. Export the final model as float16 and print its sha256 for ``weights/registry.json``.

    python weights/make_lit_effl0.py [--epochs N] [--device cuda]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# scenes never used for training: benchmarks/multiview.py --scenes <these> measures on them
HELD_OUT = (
    "terrace", "wxbs-wgabs-petrzin", "wxbs-wgalbs-bridge", "wxbs-wgalbs-kyiv_dolltheater",
    "wxbs-wgalbs-kyiv_dolltheater2", "wxbs-wgalbs-stadium", "wxbs-wgalbs-zanky", "wxbs-wglbs-berlin",
    "wxbs-wglbs-him", "wxbs-wglbs-silasveta2",
)


def prepare(multiview: Path, dst: Path) -> int:
    if dst.exists():
        shutil.rmtree(dst)
    n = 0
    for scene in sorted(p for p in multiview.iterdir() if p.is_dir() and p.name not in HELD_OUT):
        (dst / scene.name).mkdir(parents=True)
        for img in sorted(scene.iterdir()):
            os.symlink(img.resolve(), dst / scene.name / img.name)
            n += 1
    assets = REPO / "lit" / "assets" / "photos"
    for scene, target in (("sacre_coeur", "sacre_coeur"), ("street", "street")):
        (dst / target).mkdir(parents=True, exist_ok=True)
        for img in sorted((assets / scene).iterdir()):
            os.symlink(img.resolve(), dst / target / f"lp_{img.name}")
            n += 1
    return n


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--multiview", default=str(REPO.parent / "shared" / "data" / "multiview"))
    p.add_argument("--out", default=str(REPO / "runs" / "lit-effl0"))
    p.add_argument("--device", default="auto")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--export-only", action="store_true")
    p.add_argument("--prepare-only", action="store_true", help="only build the training-scene folder")
    args = p.parse_args(argv)
    data = REPO / "runs" / "lit-effl0-data"
    if not args.export_only:
        print(f"training folder: {prepare(Path(args.multiview), data)} photos in {data}", file=sys.stderr)
        if args.prepare_only:
            return 0
        from lit.cli import main as lit_main

        cmd = ["train", "--config", str(REPO / "configs" / "lit_effl0.yaml"), "--out", args.out,
               "--device", args.device, "--set", f"data.root={data}"]
        if args.epochs is not None:
            cmd += ["--set", f"optim.epochs={args.epochs}"]
        if args.resume:
            cmd.append("--resume")
        if lit_main(cmd):
            return 1
    import lit
    from lit.models import save_checkpoint

    model = lit.load_model(os.path.join(args.out, "model.pt"))
    dst = REPO / "weights" / "lit-effl0.pt"
    save_checkpoint(model, dst, half=True, meta={"name": "lit-effl0", "recipe": "configs/lit_effl0.yaml",
                                                  "held_out_scenes": list(HELD_OUT)})
    digest = hashlib.sha256(dst.read_bytes()).hexdigest()
    print(json.dumps({"file": str(dst), "bytes": dst.stat().st_size, "sha256": digest}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
