"""``lit demo``: the offline demo on the bundled photos."""

from __future__ import annotations

from ._common import add_device_argument, device

NAME = "demo"
HELP = "offline demo: extract, index, search and plot a small bundled photo set"


def add_arguments(p) -> None:
    p.add_argument("--out", default="demo-figures",
                   help="folder for the figures (default demo-figures/, a folder of its own: the README's figures/ "
                        "are rebuilt only with --out figures)")
    p.add_argument("--work-dir", default=None, help="folder for features and index (default: a temporary folder)")
    add_device_argument(p)


def run(args) -> int:
    from ..demo import run_demo

    return run_demo(out_dir=args.out, device=device(args), work_dir=args.work_dir)
