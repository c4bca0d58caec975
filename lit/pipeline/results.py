"""Search results as files: JSON, CSV and pairs lists (hloc / kapture), one name convention."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from pathlib import Path

from .._fileio import atomic_write
from .._names import decode_name, display_name, json_fields
from ..errors import NotFoundError, PipelineError
from .search import QueryResult

__all__ = ["json_name", "plot_paths", "read_pairs", "results_to_dict", "scene_of", "write_csv", "write_json",
           "write_pairs"]


def json_name(d: dict, key: str) -> str | None:
    """The exact name of field ``key`` of a result written by :func:`write_json` (its
    ``KEY_bytes`` where present, else the shown name): ``os.fsencode`` gives the file's
    bytes."""
    raw = d.get(key + "_bytes")
    return decode_name(bytes.fromhex(raw)) if raw is not None else d.get(key)


def _hit(h) -> dict:
    d = {"rank": h.rank, **json_fields("name", h.name), "score": h.score}
    if getattr(h, "support", None) is not None:  # re-ranked: the support of the verified matches
        d["support"] = h.support
    if getattr(h, "calibrated", None) is not None:  # text queries: standard deviations above chance
        d["calibrated"] = h.calibrated
    return d


def results_to_dict(results: Sequence[QueryResult], db_root: str | None, query_root: str | None) -> dict:
    """Results as JSON-ready data (valid UTF-8: no lone surrogates). Names, queries and roots
    are shown by :func:`lit.display_name`; where that differs from the real name
    (undecodable bytes, control characters) a ``*_bytes`` field beside it holds the exact
    bytes in hex (``name_bytes``, ``query_bytes``, ``db_root_bytes``, ``query_root_bytes``;
    :func:`json_name` reads either)."""
    return {**json_fields("db_root", db_root), **json_fields("query_root", query_root),
            "score": "ASMK similarity (see `lit search --help`); higher is more similar, comparable within one query",
            "queries": [{**json_fields("query", r.query), "results": [_hit(h) for h in r.hits]} for r in results]}


def write_json(results: Sequence[QueryResult], path: str | os.PathLike, db_root: str | None = None,
               query_root: str | None = None) -> None:
    """JSON: ``{"db_root", "query_root", "score", "queries": [{"query", "results": [{"rank",
    "name", "score"}]}]}`` (:func:`results_to_dict`: names as :func:`lit.display_name` shows
    them, with ``name_bytes`` in hex where that differs from the file's name)."""
    with atomic_write(path, "w", encoding="utf-8") as f:
        json.dump(results_to_dict(results, db_root, query_root), f, indent=1)


def write_csv(results: Sequence[QueryResult], path: str | os.PathLike) -> None:
    """CSV with header ``query,rank,name,score`` (scores with 6 significant digits; text
    queries add ``calibrated``), valid UTF-8: names and queries as :func:`lit.display_name`
    shows them (``caf\\xe9.jpg``, ``a\\nb.jpg``: one row per line); JSON keeps the exact bytes."""
    with atomic_write(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        calibrated = any(h.calibrated is not None for r in results for h in r.hits)  # text queries
        w.writerow(["query", "rank", "name", "score", *(["calibrated"] if calibrated else [])])
        for r in results:
            for h in r.hits:
                w.writerow([display_name(r.query), h.rank, display_name(h.name), f"{h.score:.6g}",
                            *([f"{h.calibrated:.4g}" if h.calibrated is not None else ""] if calibrated else [])])


def write_pairs(results: Sequence[QueryResult], path: str | os.PathLike) -> None:
    """``query_name db_name`` per line (hloc's pairs list, which kapture's
    ``kapture_import_image_pairs`` reads too), each name relative to its root.

    hloc splits each line at white space, so a name with a space, tab or newline cannot be
    written (there is no escape in the format): such a name is refused, nothing is written.
    Names are written byte for byte (``caf\\xe9.jpg`` as the byte 0xE9, as the file system
    has it: the readers open the files by these names); :func:`read_pairs` reads them back
    exactly.

    Raises:
        PipelineError: a name holds white space.
    """
    for r in results:
        for name in (r.query, *(h.name for h in r.hits)):
            if any(c.isspace() for c in name):
                raise PipelineError(f"{display_name(name)!r}: a pairs file (hloc) cannot hold names with spaces, as its "
                                    "readers split lines at white space: rename the file, or write JSON or CSV instead")
    with atomic_write(path, "w", encoding="utf-8", errors="surrogateescape") as f:
        for r in results:
            for h in r.hits:
                f.write(f"{r.query} {h.name}\n")


def read_pairs(path: str | os.PathLike) -> list[tuple[str, str]]:
    """The ``(name_a, name_b)`` pairs of a pairs file (hloc / kapture: two names per line
    separated by white space; blank lines and ``#`` comments skipped; names with ``/``).

    Raises:
        NotFoundError: no such file.
        PipelineError: a line that does not hold exactly two names (the line number says
            which; names with spaces cannot be written in this format).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise NotFoundError(f"{display_name(path)}: no such pairs file")
    pairs = []
    with open(path, encoding="utf-8-sig", errors="surrogateescape") as f:  # a byte-order mark is dropped
        for number, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            fields = line.split()
            if len(fields) != 2:
                raise PipelineError(f"{display_name(path)}, line {number}: expected two names separated by a space, "
                                    f"got {len(fields)} fields ({display_name(line)!r}); names cannot hold spaces")
            pairs.append((fields[0], fields[1]))
    if not pairs:
        raise PipelineError(f"{display_name(path)}: no pairs in the file")
    return pairs


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
