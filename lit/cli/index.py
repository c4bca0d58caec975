"""``lit index``: a k-means codebook and an ASMK index of a feature file (or a sharded one)."""

from __future__ import annotations

import json
import sys

from ._common import add_device_argument, device

NAME = "index"
HELP = "train a codebook and build an ASMK index from a feature file"
DESCRIPTION = """Train a k-means codebook and build an ASMK index (binary, alpha 3, FIRe's options).

Codebook size: 12 x sqrt(number of training descriptors) words, at most 65536 (FIRe's size,
reached at about 30M descriptors; FIRe's 20k SfM-120k images x 1000 give 54k) and at most half the
descriptors; chosen on real held-out photos (benchmarks/pipeline_defaults.py). With fewer than
100,000 descriptors a warning says that the codebook is noisy, and k-means runs 4 times (the
codebook of least quantisation error is kept); --train-features learns it on another feature
file of the same model (e.g. a larger set of similar photos).

The index file is self-contained: image names, image root, codebook, parameters and the
fingerprint of the model and extraction settings are stored in it."""


def add_arguments(p) -> None:
    p.add_argument("features", help="HDF5 feature file of the database (from `lit extract`); with --stats, an index")
    p.add_argument("--stats", action="store_true", help="show what the index file FEATURES holds instead: images, "
                   "words, photos added and removed since the last compaction, the codebook's source and error")
    p.add_argument("--compact", action="store_true", help="fold the journal of the index file FEATURES (photos added "
                   "and removed by `lit add`/`lit remove`) into it now")
    p.add_argument("--out", help="output index file (HDF5; holds the names, image root, codebook, "
                   "parameters and the model fingerprint)")
    p.add_argument("--codebook", help="use this codebook (.npy K x d, or an index file) instead of training one")
    p.add_argument("--codebook-size", type=int, default=None,
                   help="k-means words (default: 12 x sqrt(descriptors), at most 65536: see above)")
    p.add_argument("--train-features", help="learn the codebook on this feature file (same model) instead of the database")
    p.add_argument("--image-root", help="folder the database image names are relative to (stored for `lit search --plot`; "
                   "default: the one the feature file records)")
    p.add_argument("--real", action="store_true", help="real-valued aggregated vectors instead of binary")
    p.add_argument("--idf", action="store_true", help="weight words by idf (off in FIRe)")
    p.add_argument("--seed", type=int, default=0, help="k-means seed")
    p.add_argument("--force", action="store_true", help="go on when --train-features/--codebook come from another model")
    p.add_argument("--shards", type=int, default=1,
                   help="build a sharded index of this many parts, OUT.RRRRR-of-NNNNN.h5 (under torchrun: one part per rank)")
    add_device_argument(p)


def run(args) -> int:
    from .. import pipeline
    from ..distributed import is_main_process

    if args.stats:
        return _stats(args)
    if args.compact:
        from ..pipeline.live import compact_index

        print(compact_index(args.features, device=device(args)))
        return 0
    if not args.out:
        from ..errors import UsageError

        raise UsageError("--out is required (the index file to write)")
    codebook = cb_fp = None
    if args.codebook:
        codebook, cb_fp = pipeline.load_codebook(args.codebook)
    summary = pipeline.make_index(
        args.features, args.out, parts=args.shards, codebook=codebook, codebook_source=args.codebook,
        codebook_fingerprint=cb_fp, size=args.codebook_size, train_features=args.train_features,
        image_root=args.image_root, seed=args.seed, binary=not args.real, use_idf=args.idf, device=device(args),
        force=args.force,
    )
    if not is_main_process():
        return 0
    info = summary.info
    root = f", image root {info.image_root}" if info.image_root else " (image root unknown: give --db-root to `lit search --plot`)"
    if summary.parts == 1:
        print(f"indexed {len(info.names)} images ({info.descriptors} descriptors, {info.codebook_size} words) "
              f"into {args.out}{root}")
    else:
        print(f"indexed {len(info.names)} images ({info.descriptors} descriptors) into {summary.parts} parts "
              f"{args.out} (.RRRRR-of-NNNNN.h5){root}: {json.dumps(summary.stats)}")
    if summary.text_note:
        print(summary.text_note, file=sys.stderr)
    return 0


def _stats(args) -> int:
    from ..pipeline.live import index_stats

    stats = index_stats(args.features, device=device(args))
    for key, value in stats.items():
        print(f"{key}: {json.dumps(value)}")
    return 0
