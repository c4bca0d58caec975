"""Benchmark programs shared by ``benchmarks/`` scripts and the ``lit`` command line."""

from __future__ import annotations

import json
import os

__all__ = ["print_report"]


def print_report(report: dict, path: str | os.PathLike | None = None, indent: int | None = None) -> None:
    """Print a benchmark's ``report`` as JSON on stdout (``indent`` as ``json.dumps``) and,
    when ``path`` is given, also write it there (indented, replaced atomically): the one way
    the ``benchmarks/`` scripts give their figures."""
    print(json.dumps(report, indent=indent))
    if path:
        from .._fileio import atomic_write

        with atomic_write(path) as f:
            json.dump(report, f, indent=1)
