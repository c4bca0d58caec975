"""``lit add``: add photos to an index in place (extracted with the index's model and settings)."""

from __future__ import annotations

import sys

from ._common import add_device_argument, device

NAME = "add"
HELP = "add photos to an index in place (no rebuild)"
DESCRIPTION = """Add photos to an index made by `lit index`, in place: only the new photos are extracted
(with the model and extraction settings recorded in the index; the fingerprint is checked) and
quantised with the index's codebook; no k-means, no rebuild. Names are relative to the index's
image root, as `lit extract` names them. A photo whose name is already in the index is replaced
when the file changed and skipped when it is identical. Their text-search embeddings are added
too, so `lit search INDEX --text ...` finds them at once. The change is committed to the index
(its journal, INDEX.live/) before the command returns; a kill leaves the index as before or
after it, and a rerun completes it. Exit status: 0 every photo is in the index, 3 some files
could not be extracted (named on stderr), 4 none could be, 2 bad options or another writer."""


def add_arguments(p) -> None:
    p.add_argument("index", help="index file from `lit index`")
    p.add_argument("inputs", nargs="*", help="image files and/or folders (searched recursively)")
    p.add_argument("--list", help="text file with one image path per line (relative to the list's folder)")
    p.add_argument("--features", help="add the photos of this feature file (same model; fingerprint checked) "
                   "instead of extracting")
    p.add_argument("--model", default=None, help="checkpoint path or registered name (default: the index's model, "
                   "else the default model; it must be the one the index was made with)")
    p.add_argument("--text-model", default=None, help="text model whose image tower embeds the photos for text "
                   "search (default: the default text model, when the index has text embeddings; 'none': skip)")
    p.add_argument("--wait", type=float, default=0.0, help="seconds to wait for another process changing the "
                   "index (default 0: refuse at once)")
    p.add_argument("--force", action="store_true", help="with --features: go on when the file comes from another model")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_device_argument(p)


def run(args) -> int:
    from .._image import display_name
    from ..errors import UsageError
    from ..pipeline import gather_images
    from ..pipeline.live import LiveIndex

    if args.features and (args.inputs or args.list):
        raise UsageError("give photos or --features, not both")
    if not args.features and not (args.inputs or args.list):
        raise UsageError("no photos given (files, folders, --list or --features)")
    dev = device(args)
    model = None
    if args.model:
        import lit

        model = lit.load_model(args.model, device=dev)
    with LiveIndex.open(args.index, model=model, device=dev, wait=args.wait, load=False) as live:
        if live.has_text and not args.features and args.text_model != "none":
            from ..text import default_image_embedder

            embedder, note = default_image_embedder(args.text_model, dev)
            if note:
                print(note, file=sys.stderr)
            live.text_model = embedder
        if args.features:
            report = live.add_features(args.features, force=args.force)
        else:
            paths, _ = gather_images(args.inputs, args.list)
            report = live.add(paths, progress=not args.quiet)
        print(report.report())
        for name, error in report.failed.items():
            print(f"  failed: {display_name(error) if error else name}", file=sys.stderr)
        if report.failed:
            print(f"lit add: {len(report.failed)} photos could not be added (named above)", file=sys.stderr)
        print(f"{display_name(args.index)}: {len(live)} images", file=sys.stderr)
    return report.status
