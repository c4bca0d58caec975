"""Train and export ``lit-effl0`` (weights/lit-effl0.safetensors, fp16) reproducibly.

1. Prepare the training folder: the multi-view scenes of ``--multiview`` (default
   ../shared/data/multiview) except the held-out ones, plus the two landmark-pair scenes
   of ``lit/assets/photos`` (sacre_coeur joins the multiview sacre_coeur scene).
2. ``lit train --config configs/lit_effl0.yaml --out runs/lit-effl0``.
3. Export the final model as float16 safetensors and print its sha256 for
   ``weights/registry.json``. The match rule (the background test) is added to the file by
   ``make_lit_effl0_background.py``, run after this.

    python weights/recipes/make_lit_effl0.py [--epochs N] [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

from lit.bench.multiview import LIT_EFFL0_HELD_OUT as HELD_OUT  # never used for training

REPO = Path(__file__).resolve().parents[2]


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
    from lit._fileio import file_sha256
    from lit.models import save_checkpoint

    model = lit.load_model(os.path.join(args.out, "model.pt"))
    dst = REPO / "weights" / "lit-effl0.safetensors"
    save_checkpoint(model, dst, half=True, meta={"name": "lit-effl0", "recipe": "configs/lit_effl0.yaml",
                                                  "held_out_scenes": list(HELD_OUT)})
    digest = file_sha256(dst)
    print(json.dumps({"file": str(dst), "bytes": dst.stat().st_size, "sha256": digest}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
