"""Search results as files: JSON, CSV and pairs lists (hloc / kapture), one name convention."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from pathlib import Path

from .._fileio import atomic_write
from .search import QueryResult

__all__ = ["plot_paths", "results_to_dict", "scene_of", "write_csv", "write_json", "write_pairs"]


def results_to_dict(results: Sequence[QueryResult], db_root: str | None, query_root: str | None) -> dict:
    return {"db_root": db_root, "query_root": query_root,
            "score": "ASMK similarity (see `lit search --help`); higher is more similar, comparable within one query",
            "queries": [{"query": r.query, "results": [{"rank": h.rank, "name": h.name, "score": h.score} for h in r.hits]}
                        for r in results]}


def write_json(results: Sequence[QueryResult], path: str | os.PathLike, db_root: str | None = None,
               query_root: str | None = None) -> None:
    """JSON: ``{"db_root", "query_root", "score", "queries": [{"query", "results": [{"rank",
    "name", "score"}]}]}``; names that are not valid UTF-8 are written with ``\\udcXX`` escapes
    (``os.fsencode`` restores the bytes)."""
    with atomic_write(path, "w", errors="surrogateescape") as f:
        json.dump(results_to_dict(results, db_root, query_root), f, indent=1)


def write_csv(results: Sequence[QueryResult], path: str | os.PathLike) -> None:
    """CSV with header ``query,rank,name,score`` (scores with 6 significant digits); file
    names are written as bytes (surrogateescape), like the file system has them."""
    with atomic_write(path, "w", newline="", encoding="utf-8", errors="surrogateescape") as f:
        w = csv.writer(f)
        w.writerow(["query", "rank", "name", "score"])
        for r in results:
            for h in r.hits:
                w.writerow([r.query, h.rank, h.name, f"{h.score:.6g}"])


def write_pairs(results: Sequence[QueryResult], path: str | os.PathLike) -> None:
    """``query_name db_name`` per line (hloc / kapture pairs), each name relative to its root."""
    with atomic_write(path, "w", encoding="utf-8", errors="surrogateescape") as f:
        for r in results:
            for h in r.hits:
                f.write(f"{r.query} {h.name}\n")


def scene_of(name: str) -> str | None:
    """The scene of a stored name: the folder holding the photo (``a/b/c.jpg`` -> ``b``),
    ``None`` for a bare file name.

    The folder holding the photo, not the first one, so that names re-based by a merge
    (``photos/church/1.jpg`` and ``photos2/church/2.jpg``) keep their scenes.
    """
    parent = Path(name).parent
    return parent.name if parent.name else None


def plot_paths(path: str | os.PathLike, n: int) -> list[str]:
    """One figure path per query: ``path`` itself for one query, else ``stem_001.ext``..."""
    path = os.fspath(path)
    if n == 1:
        return [path]
    stem, ext = os.path.splitext(path)
    return [f"{stem}_{i + 1:03d}{ext}" for i in range(n)]
