"""``lit download``: a registered model or a dataset, with sha256 checks."""

from __future__ import annotations

NAME = "download"
HELP = "download a registered model (or other registered weights) or a dataset (with sha256 checks)"


def add_arguments(p) -> None:
    p.add_argument("name", help="registered name (`lit models`) or dataset (roxford5k, rparis6k, revisitop1m, retrieval-sfm-120k)")
    p.add_argument("--root", help="dataset folder")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args) -> int:
    from .. import hub
    from .._download import cache_dir, cleanup_new_dirs
    from ..data import DATASETS, download_dataset
    from ..errors import UsageError

    if args.name in hub.registry():
        with cleanup_new_dirs(cache_dir()):  # no empty folders left behind by a failure
            path = hub.resolve(args.name, progress=not args.quiet)
        print(path)
        return 0
    if args.name not in DATASETS:
        raise UsageError(f"unknown name {args.name!r}: registered {', '.join(hub.list_models(None))}; "
                         f"datasets {', '.join(sorted(DATASETS))}")
    if not args.root:
        raise UsageError("--root DIR is needed to download a dataset")
    with cleanup_new_dirs(args.root):
        print(download_dataset(args.name, args.root, progress=not args.quiet))
    return 0
