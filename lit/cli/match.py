"""``lit match``: the super-feature matches of two images under the model's match rule."""

from __future__ import annotations

import json
import os

from ._common import add_model_arguments, check_figure_path, load_model, none_or_float, parse_scales

NAME = "match"
HELP = "match the super-features of two images, or of every pair of a pairs file"
DESCRIPTION = """Match the super-features of two images: reciprocal nearest neighbours by cosine
similarity that pass the model's match rule (default: the model's own, calibrated on its
training photos and saved in its weights file; --threshold / --margin replace its parts):
  fire (and any FIRe checkpoint): cosine >= 0.9 (FIRe's).
  lit-effl0: the background test: a pair is kept when its cosine beats by at least 0.1 the
    best cosine of either super-feature to 7424 super-features of unrelated photos stored
    in the model's weights file; no cosine floor. On its 10 held-out
    scenes it matches 6 of 10 same-scene pairs and 6.7 % of different-scene pairs
    (weights/README.md).
score: the sum of the cosine similarities of the matches (0 when there is none), so about
the number of matches times their mean similarity; more matches mean more evidence that the
photos show the same place.

--pairs FILE --out matches.h5|.json: every pair of a pairs file ('name_a name_b' per line, as
`lit search --pairs` and hloc write it; names relative to --image-root, the second ones to
--db-root when given) matched in one process, each image extracted once. The HDF5 file has
hloc's matches layout (a group 'name_a/name_b', '/' inside names replaced by '-', with
matches0 and matching_scores0 per super-feature of image a) plus the matched positions in
pixels of the original images (positions0, positions1)."""


def add_arguments(p) -> None:
    p.add_argument("image_a", nargs="?", help="first image (or give --pairs)")
    p.add_argument("image_b", nargs="?", help="second image")
    p.add_argument("--pairs", help="match every pair of this pairs file ('name_a name_b' per line, the format `lit "
                   "search --pairs` and hloc write) in one process; write them with --out")
    p.add_argument("--out", help="--pairs: the matches file: .h5 (hloc's matches layout, plus positions) or .json")
    p.add_argument("--image-root", default=".", help="--pairs: folder the names are relative to (default: .)")
    p.add_argument("--db-root", help="--pairs: folder of the second names, when not --image-root (e.g. the index's "
                   "image root for pairs from `lit search --pairs`)")
    p.add_argument("--threshold", default=None,
                   help="minimum cosine similarity, or none (default: the model's: 0.9 for fire, none for lit-effl0)")
    p.add_argument("--margin", default=None,
                   help="background test margin, or none to drop the test (default: the model's: 0.1 for lit-effl0; "
                        "fire has no background)")
    p.add_argument("--ratio", type=float, default=None, help="also apply a ratio test d1/d2 <= RATIO")
    p.add_argument("--plot", help="write a figure of the matches (.png/.pdf/.svg)")
    p.add_argument("--json", help="write the matches as JSON")
    p.add_argument("--no-verify", action="store_true",
                   help="do not verify the matches geometrically (default: count and draw the matches whose attention "
                   "centroids agree with one similarity transformation, as `lit search --rerank` does)")
    add_model_arguments(p)


def _shown(path: str) -> str:
    """A photo's name in titles: its file name with the folder holding it (``scene/01.jpg``)."""
    parent = os.path.basename(os.path.dirname(os.path.abspath(path)))
    return f"{parent}/{os.path.basename(path)}" if parent else os.path.basename(path)


def run(args) -> int:
    from ..errors import UsageError

    if args.pairs:  # options checked before the heavy imports: a typo is answered at once
        if args.image_a or args.image_b or args.plot or args.json:
            raise UsageError("--pairs takes no images, --plot or --json: the matches go to --out (.h5 or .json)")
        if not args.out or os.path.splitext(args.out)[1].lower() not in (".h5", ".hdf5", ".json"):
            raise UsageError(f"--pairs needs --out ending in .h5 or .json (got {args.out!r})")
    elif not (args.image_a and args.image_b):
        raise UsageError("give two images, or --pairs FILE --out FILE")
    elif args.out:
        raise UsageError("--out is for --pairs; for two images use --json or --plot")
    from .. import pipeline, viz

    pairs = pipeline.read_pairs(args.pairs) if args.pairs else None
    model = load_model(args)
    if args.plot:
        check_figure_path(args.plot)
    threshold = "model" if args.threshold is None else none_or_float(args.threshold, "--threshold")
    margin = "model" if args.margin is None else none_or_float(args.margin, "--margin")
    try:
        model.match_rule(threshold, margin)
    except UsageError as err:  # name the options that were given
        given = [o for o, v in (("--threshold", args.threshold), ("--margin", args.margin)) if v is not None]
        raise UsageError(f"{' / '.join(given)}: {err}" if given else str(err)) from None
    if args.pairs:
        return _run_pairs(args, model, pairs, threshold, margin)
    img_a, img_b, fa, fb, m, rule = pipeline.match_images(
        model, args.image_a, args.image_b, threshold=threshold, margin=margin, ratio=args.ratio,
        scales=parse_scales(args.scales), features_num=args.features_num, image_size=args.image_size, progress=True)
    thr = rule.threshold
    check = None
    if not args.no_verify:
        size = model.cfg.runtime.image_size if args.image_size is None else args.image_size
        check = pipeline.verify_matches(fa, fb, m, pipeline.RerankSettings(image_size=size))
    source = " (the model's rule)" if args.threshold is None and args.margin is None else ""
    print(f"{len(m)} match{'' if len(m) == 1 else 'es'} ({rule.describe()}{source}"
          f"{', ratio ' + str(args.ratio) if args.ratio else ''}), "
          f"score {m.score:.4g} (sum of the matches' cosine similarities)")
    if check is not None:
        print(f"{check.num_inliers} of them verified: their positions agree with one similarity transformation")
    if args.json:
        from .._fileio import atomic_write

        with atomic_write(args.json) as f:
            json.dump({"matches": len(m), "rule": rule.describe(), "threshold": thr, "margin": rule.margin, "score": m.score,
                       "indices_a": m.indices_a.tolist(), "indices_b": m.indices_b.tolist(),
                       "similarity": m.similarity.tolist(), "positions_a": fa.positions[m.indices_a].tolist(),
                       "positions_b": fb.positions[m.indices_b].tolist(),
                       **({"inliers": check.inliers.tolist(), "transform": check.transform.tolist()} if check else {})}, f)
    if args.plot:
        fig = viz.plot_matches(img_a, img_b, fa, fb, m, title=f"{_shown(args.image_a)} - {_shown(args.image_b)}",
                               inliers=None if check is None else check.inliers)
        viz.save_figure(fig, args.plot)
        print(f"wrote {args.plot}")
    return 0


def _run_pairs(args, model, pairs, threshold, margin) -> int:
    import sys

    from .. import pipeline
    from .._names import display_name

    results, rule = pipeline.match_pairs(
        model, pairs, args.image_root, args.db_root, threshold=threshold, margin=margin, ratio=args.ratio,
        scales=parse_scales(args.scales), features_num=args.features_num, image_size=args.image_size)
    for r in results:
        print(f"{display_name(r.name_a)} {display_name(r.name_b)}: {len(r.matches)} match{'' if len(r.matches) == 1 else 'es'}, "
              f"score {r.matches.score:.4g}")
    if os.path.splitext(args.out)[1].lower() == ".json":
        pipeline.write_matches_json(results, args.out, rule)
    else:
        pipeline.write_matches_h5(results, args.out, rule)
    matched = sum(len(r.matches) > 0 for r in results)
    print(f"{len(results)} pairs ({rule.describe()}), {matched} with matches: wrote {args.out}", file=sys.stderr)
    return 0
