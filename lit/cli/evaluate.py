"""``lit evaluate``: the revisited Oxford/Paris benchmark (options of benchmarks/revisited.py)."""

from __future__ import annotations

import argparse

NAME = "evaluate"
HELP = "revisited Oxford/Paris benchmark (same options as benchmarks/revisited.py)"
RAW_ARGUMENTS = True  # the options belong to the benchmark's own parser


def add_arguments(p) -> None:
    p.add_argument("rest", nargs=argparse.REMAINDER)


def run(args) -> int:
    from ..bench.revisited import main as revisited_main

    return revisited_main(args.rest)
