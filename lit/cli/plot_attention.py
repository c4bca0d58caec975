"""``lit plot-attention``: the attention maps of an image's strongest super-features."""

from __future__ import annotations

import os

from ._common import DEFAULT_MODEL, add_model_arguments, check_figure_path, load_model

NAME = "plot-attention"
HELP = "plot the attention maps of an image's strongest super-features"


def add_arguments(p) -> None:
    p.add_argument("image")
    p.add_argument("--out", help="output figure (default FOLDER_IMAGE_attention.png in the current folder, never overwritten)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--scale", type=float, default=1.0, help="extraction scale (default 1)")
    p.add_argument("--top", type=int, default=16, help="how many of the strongest super-features (default 16; at most N)")
    p.add_argument("--indices", help="comma-separated super-feature indices instead of the strongest")
    add_model_arguments(p)


def default_out(image: str) -> str:
    """``<folder>_<image stem>_attention.png`` in the current folder (not beside the image: a
    figure in the photo folder would be extracted with the photos next time); two ``01.jpg``
    of different folders get different names, and nothing is overwritten (``_2``, ``_3``...)."""
    path = os.path.abspath(image)
    folder = os.path.basename(os.path.dirname(path))
    stem = os.path.splitext(os.path.basename(path))[0]
    base = f"{folder}_{stem}" if folder else stem
    out, i = f"{base}_attention.png", 2
    while os.path.exists(out):
        out, i = f"{base}_attention_{i}.png", i + 1
    return out


def run(args) -> int:
    from .. import viz
    from .._image import load_image
    from ..errors import UsageError

    if args.scales is not None or args.features_num is not None:
        raise UsageError("plot-attention shows the super-features of one scale: use --scale S "
                         "(--scales and --features-num do not apply)")
    if args.out:
        check_figure_path(args.out)
        if os.path.exists(args.out) and not args.overwrite:
            raise UsageError(f"{args.out}: already exists (pass --overwrite to replace it)")
    model = load_model(args)
    trained = model.cfg.runtime.training_scales or model.cfg.runtime.scales
    used = model.cfg.runtime.scales
    lo, hi = min(*used, *trained), max(*used, *trained)
    if not lo <= args.scale <= hi:
        import sys

        print(f"lit plot-attention: warning: --scale {args.scale:g} is outside the scales this model extracts and was "
              f"trained at ({lo:g}-{hi:g}): its attention maps may not mean much there", file=sys.stderr)
    img = load_image(args.image, model.cfg.runtime.image_size if args.image_size is None else args.image_size)
    sf = model.superfeatures(img, scale=args.scale)
    n = sf.attention.shape[0]
    if args.indices:
        try:
            indices = [int(i) for i in args.indices.split(",")]
        except ValueError:
            raise UsageError(f"--indices must be comma-separated integers, got {args.indices!r}") from None
        bad = [i for i in indices if not 0 <= i < n]
        if bad:
            raise UsageError(f"--indices {bad}: this model has super-features 0..{n - 1}")
    else:
        indices = None
        if not 1 <= args.top <= n:
            raise UsageError(f"--top {args.top}: this model has {n} super-features per scale, choose 1..{n}")
    model_name = args.model or DEFAULT_MODEL
    title = f"{os.path.basename(args.image)}, {model_name}, scale {args.scale:g}: " + (
        "chosen super-features" if indices else f"{args.top} strongest of {n} super-features")
    fig = viz.plot_attention(img, sf, indices=indices, top=args.top, title=title, normalize="each")
    out = args.out or default_out(args.image)
    viz.save_figure(fig, out)
    print(f"wrote {out}")
    return 0
