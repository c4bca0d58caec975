"""Fit lit-effl0's token projection (``weights/lit-effl0.tokens.safetensors``): the PCA to 64
dimensions of the strongest normalised backbone cells of its 47 training photos -- the
multi-view scenes it was trained on (``../shared/data/multiview`` without the held-out ones)
and the 4 bundled landmark-pair photos -- as ``lit.models.fit_token_projection`` computes it.

    python weights/recipes/make_lit_effl0_tokens.py [--multiview ../shared/data/multiview]
"""

import argparse
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

import lit
from lit.bench.multiview import LIT_EFFL0_HELD_OUT as HELD_OUT  # never used
from lit.models.tokens import fit_token_projection

REPO = Path(__file__).resolve().parents[2]


def training_photos(multiview: Path) -> list[Path]:
    photos = [img for scene in sorted(p for p in multiview.iterdir() if p.is_dir() and p.name not in HELD_OUT)
              for img in sorted(scene.iterdir())]
    assets = REPO / "lit" / "assets" / "photos"
    return photos + [img for scene in ("sacre_coeur", "street") for img in sorted((assets / scene).iterdir())]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--multiview", default=str(REPO.parent / "shared" / "data" / "multiview"))
    p.add_argument("--out", default=str(REPO / "weights" / "lit-effl0.tokens.safetensors"))
    args = p.parse_args(argv)
    photos = training_photos(Path(args.multiview))
    torch.manual_seed(0)
    model = lit.load_model("lit-effl0")
    weight, bias = fit_token_projection(model, [str(x) for x in photos])
    save_file({"weight": weight.contiguous(), "bias": bias.contiguous()}, args.out,
              metadata={"photos": str(len(photos)), "recipe": "weights/recipes/make_lit_effl0_tokens.py"})
    print(f"{args.out}: {tuple(weight.shape)} from {len(photos)} photos")
    return 0


if __name__ == "__main__":
    sys.exit(main())
