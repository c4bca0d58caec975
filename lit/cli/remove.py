"""``lit remove``: remove photos from an index in place."""

from __future__ import annotations

import sys

NAME = "remove"
HELP = "remove photos from an index in place"
DESCRIPTION = """Remove photos from an index made by `lit index`, by name (as `lit search` prints them:
relative to the index's image root). Unknown names are reported, not fatal. The change is
committed to the index before the command returns; removed photos are never returned again,
and `lit add` of the same photos gives back exactly the original results."""


def add_arguments(p) -> None:
    p.add_argument("index", help="index file from `lit index`")
    p.add_argument("names", nargs="*", help="names of the photos to remove")
    p.add_argument("--list", help="text file with one name per line (blank and '#' lines skipped)")
    p.add_argument("--wait", type=float, default=0.0, help="seconds to wait for another process changing the "
                   "index (default 0: refuse at once)")


def run(args) -> int:
    from ..errors import UsageError
    from ..pipeline.live import read_name_list, remove_images

    names = list(args.names) + (read_name_list(args.list) if args.list else [])
    if not names:
        raise UsageError("no names given (arguments or --list)")
    report = remove_images(args.index, names, wait=args.wait, device="cpu")
    print(report.report())
    for name in report.unknown:
        print(f"  not in the index: {name}", file=sys.stderr)
    return 0
