"""``lit extract``: super-features of images into a resumable HDF5 feature file."""

from __future__ import annotations

import sys

from ._common import add_model_arguments, load_model, parse_scales

NAME = "extract"
HELP = "extract super-features of images into an HDF5 file (resumable)"
DESCRIPTION = ("Extract super-features of images into an HDF5 feature file. Reruns skip images already "
               "in the file and retry the ones that failed. Exit status: 0 every image is in the file, "
               "3 finished but some files could not be extracted (each named on stderr, recorded in "
               "the file), 4 none could be, 2 bad options.")


def add_arguments(p) -> None:
    p.add_argument("inputs", nargs="*", help="image files and/or folders (searched recursively)")
    p.add_argument("--list", help="text file with one image path per line (relative to the list's folder)")
    p.add_argument("--out", required=True, help="output HDF5 feature file; an existing one is resumed (its folder is created)")
    p.add_argument("--root", help="store image names relative to this folder (default: the folder given, or the "
                                  "deepest folder holding every input)")
    p.add_argument("--no-retry", action="store_true", help="do not retry images that failed in an earlier run")
    p.add_argument("--max-pixels", type=int, default=None,
                   help="refuse images that decode to more pixels ('too large'; default 180000000, 0: no limit; "
                        "large JPEGs are decoded reduced)")
    p.add_argument("--workers", type=int, default=0, help="image decoding processes (default 0: in the main process; "
                                                          "capped by the CPU count)")
    p.add_argument("--half", action="store_true", help="store descriptors as float16")
    p.add_argument("--batch-size", type=int, default=1,
                   help="images per forward pass: consecutive images of equal size are batched (default 1)")
    p.add_argument("--amp", action="store_true", help="fast path: bf16 autocast (features differ slightly from float32)")
    p.add_argument("--text-model", default=None, help="also store the global image embeddings of this text model's image tower, "
                   "for `lit search --text` (default: lit-text-effl0; 'none': skip)")
    p.add_argument("--tokens", action="store_true",
                   help="also write the model's local tokens beside OUT (db.h5 -> db.tokens.h5, resumable too): "
                        "`lit search --rerank N` then verifies them instead of super-features (README Re-ranking)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_model_arguments(p)


def run(args) -> int:
    import torch

    from .._image import DEFAULT_MAX_PIXELS, display_name
    from ..errors import UsageError
    from ..pipeline import extract_to_file, find_images, rank_share
    from ..text import default_image_embedder

    found = find_images(args.inputs, args.list)
    paths, root = found.paths, found.root
    if args.max_pixels is not None and args.max_pixels < 0:
        raise UsageError(f"--max-pixels must be >= 0 (0: no limit), got {args.max_pixels}")
    paths, out, report = rank_share(paths, args.out)  # torchrun: this rank's block and shard
    model = load_model(args)
    embedder, note = default_image_embedder(args.text_model, model.device)
    if note:
        print(note, file=sys.stderr)
    summary = extract_to_file(
        model, paths, out, root=args.root, default_root=root, scales=parse_scales(args.scales),
        features_num=args.features_num,
        image_size=model.cfg.runtime.image_size if args.image_size is None else args.image_size,
        num_workers=args.workers, progress=not args.quiet, half=args.half, batch_size=args.batch_size,
        amp=torch.bfloat16 if args.amp else None, retry_failed=not args.no_retry,
        max_pixels=(args.max_pixels or None) if args.max_pixels is not None else DEFAULT_MAX_PIXELS,
        embedder=embedder, ignored=found.ignored,
    )
    print(report(summary).splitlines()[0])
    if args.tokens:  # the same images, the same root: the token file's names are the feature file's
        from ..models import token_extractor, tokens_beside

        tokens = extract_to_file(
            token_extractor(model), paths, tokens_beside(out), root=args.root, default_root=root,
            num_workers=args.workers, progress=not args.quiet, half=args.half, batch_size=args.batch_size,
            amp=torch.bfloat16 if args.amp else None, retry_failed=not args.no_retry,
            max_pixels=(args.max_pixels or None) if args.max_pixels is not None else DEFAULT_MAX_PIXELS,
        )
        print(f"tokens: {report(tokens).splitlines()[0]} -> {display_name(tokens_beside(out))}")
    bad = len(summary.failed or {}) + summary.skipped_failed
    if bad:
        print(f"lit extract: {bad} of {summary.total} images could not be extracted (named above, recorded in "
              f"{display_name(out)}; `lit features info` lists them; a rerun retries them unless --no-retry)",
              file=sys.stderr)
    # under torchrun a rank that exits non-zero makes torchrun stop the other ranks: a rank
    # whose bad images are named and recorded exits 0
    return summary.status if out == args.out else 0
