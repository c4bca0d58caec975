"""The SfM-120k (and SfM-30k) training set of Radenović et al., in its published layout.

Layout under a ``root`` directory (what :func:`lit.data.download_dataset` creates)::

    root/retrieval-SfM-120k/retrieval-SfM-120k.pkl   the database file
    root/retrieval-SfM-120k/ims/...                  the images

The database file is a pickled dict with a ``"train"`` and a ``"val"`` split, each a
dict with:

- ``cids``: image ids (hexadecimal strings); they give the image files (see below);
- ``cluster``: for each image, the 3D model (cluster) it was reconstructed in;
- ``qidxs``, ``pidxs``: query / positive image pairs, as indices into ``cids``
  (``qidxs[i]`` and ``pidxs[i]`` see the same scene).

Image files are spread over three directory levels named after character pairs taken
from the end of the id: for an id ``c``, the last two characters name the first level,
the two before them the second level, the two before those the third, and the file
itself is named ``c`` (no extension): ``ims/c[-2:]/c[-4:-2]/c[-6:-4]/c``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._pickle import restricted_load
from ..errors import NotFoundError, UsageError

__all__ = ["SFM_NAMES", "SfM120k", "SfMSplit", "cid_to_path", "load_sfm_db"]

SFM_NAMES = ("retrieval-SfM-120k", "retrieval-SfM-30k")
_SPLIT_KEYS = ("cids", "cluster", "qidxs", "pidxs")


def cid_to_path(cid: str, ims_root: str | os.PathLike) -> Path:
    """Image file of an SfM-120k image id: ``ims_root/c[-2:]/c[-4:-2]/c[-6:-4]/c``."""
    if not isinstance(cid, str) or len(cid) < 6:
        raise UsageError(f"invalid SfM image id {cid!r} (expected a string of at least 6 characters)")
    return Path(ims_root) / cid[-2:] / cid[-4:-2] / cid[-6:-4] / cid


def load_sfm_db(path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """Read and validate an SfM database file (``retrieval-SfM-120k.pkl``).

    The file is read with a restricted unpickler (containers, numbers, strings and numpy
    arrays only): a file that refers to code is refused unread.

    Returns:
        ``{"train": {...}, "val": {...}}``, each with ``cids``, ``cluster``, ``qidxs``,
        ``pidxs`` (and whatever else the file holds) as stored.

    Raises:
        lit._pickle.UnsafePickleError: the file refers to code.
        ValueError: the content does not have the expected structure.
    """
    path = os.fspath(path)
    db = restricted_load(path)
    if not isinstance(db, Mapping):
        raise UsageError(f"{path}: expected a dict with 'train' and 'val' splits, got {type(db).__name__}")
    if "train" not in db and "val" not in db:
        raise UsageError(f"{path}: no 'train' or 'val' split (keys: {', '.join(map(str, db))})")
    for split, content in db.items():
        if split not in ("train", "val"):
            continue
        if not isinstance(content, Mapping):
            raise UsageError(f"{path}: split {split!r} must be a dict, got {type(content).__name__}")
        missing = [k for k in _SPLIT_KEYS if k not in content]
        if missing:
            raise UsageError(f"{path}: split {split!r} is missing key(s) {', '.join(missing)}")
        n = len(content["cids"])
        if len(content["cluster"]) != n:
            raise UsageError(f"{path}: split {split!r} has {len(content['cluster'])} cluster ids for {n} images")
        if len(content["qidxs"]) != len(content["pidxs"]):
            raise UsageError(f"{path}: split {split!r} has {len(content['qidxs'])} qidxs but "
                             f"{len(content['pidxs'])} pidxs")
        for key in ("qidxs", "pidxs"):
            idx = np.asarray(content[key]).reshape(-1)
            if idx.size and (not np.issubdtype(idx.dtype, np.integer) or idx.min() < 0 or idx.max() >= n):
                raise UsageError(f"{path}: split {split!r} {key} must be integer indices in [0, {n})")
    return dict(db)


@dataclass(frozen=True)
class SfMSplit:
    """One split of an SfM database.

    Attributes:
        name: ``"train"`` or ``"val"``.
        cids: image ids.
        cluster: :math:`(N,)` int array, 3D model of each image.
        qidxs: :math:`(P,)` int array, query image of each pair.
        pidxs: :math:`(P,)` int array, positive image of each pair.
        images: :math:`N` image paths.
    """

    name: str
    cids: tuple[str, ...]
    cluster: np.ndarray
    qidxs: np.ndarray
    pidxs: np.ndarray
    images: tuple[Path, ...]

    def __len__(self) -> int:
        return len(self.cids)


class SfM120k:
    """The SfM-120k / SfM-30k database: image lists, pairs and the validation protocol.

    Args:
        root: directory holding ``<name>/<name>.pkl`` and ``<name>/ims/``.
        name: ``"retrieval-SfM-120k"`` or ``"retrieval-SfM-30k"``.
        db_path: use this database file instead of ``root/<name>/<name>.pkl``.
        ims_root: use this image directory instead of ``root/<name>/ims`` (for SfM-30k,
            ``root/retrieval-SfM-120k/ims`` is used when ``root/<name>/ims`` is absent: the
            30k set is a subset of the 120k images).

    Raises:
        FileNotFoundError: no database file.
        lit._pickle.UnsafePickleError: the database file refers to code.
        ValueError: malformed database file.
    """

    def __init__(self, root: str | os.PathLike, name: str = "retrieval-SfM-120k",
                 db_path: str | os.PathLike | None = None, ims_root: str | os.PathLike | None = None):
        self.root = Path(root)
        self.name = name
        self.dir = self.root / name
        self.db_path = Path(db_path) if db_path is not None else self.dir / f"{name}.pkl"
        if not self.db_path.is_file():
            raise NotFoundError(
                f"{self.db_path}: SfM database file not found; download it with "
                f"lit.data.download_dataset({name.lower()!r}, {str(self.root)!r})",
                cli=f"{self.db_path}: SfM database file not found; download it with "
                    f"`lit download {name.lower()} --root {self.root}`")
        if ims_root is None:
            ims_root = self.dir / "ims"
            fallback = self.root / "retrieval-SfM-120k" / "ims"
            if not ims_root.exists() and fallback.exists():
                ims_root = fallback
        self.ims_root = Path(ims_root)
        self.db = load_sfm_db(self.db_path)
        self._splits: dict[str, SfMSplit] = {}

    def __repr__(self) -> str:
        sizes = ", ".join(f"{k}={len(v['cids'])}" for k, v in self.db.items() if k in ("train", "val"))
        return f"SfM120k({str(self.db_path)!r}, {sizes})"

    def split(self, name: str) -> SfMSplit:
        """The ``"train"`` or ``"val"`` split."""
        if name not in ("train", "val") or name not in self.db:
            have = [k for k in ("train", "val") if k in self.db]
            raise UsageError(f"{self.db_path}: unknown split {name!r} (available: {', '.join(have)})")
        if name not in self._splits:
            d = self.db[name]
            cids = tuple(str(c) for c in d["cids"])
            self._splits[name] = SfMSplit(
                name=name,
                cids=cids,
                cluster=np.asarray(d["cluster"], dtype=np.int64).reshape(-1),
                qidxs=np.asarray(d["qidxs"], dtype=np.int64).reshape(-1),
                pidxs=np.asarray(d["pidxs"], dtype=np.int64).reshape(-1),
                images=tuple(cid_to_path(c, self.ims_root) for c in cids),
            )
        return self._splits[name]

    @property
    def train(self) -> SfMSplit:
        return self.split("train")

    @property
    def val(self) -> SfMSplit:
        return self.split("val")

    def val_ground_truth(self, positives: str = "pairs") -> dict[str, Any]:
        """The validation split as a retrieval benchmark in revisitop form.

        Database: all images of the ``val`` split (``imlist`` = their ids). Queries: the
        distinct ``qidxs``, in order of first appearance. Positives of a query: its
        ``pidxs`` partners (``positives="pairs"``) or every other image of its cluster
        (``positives="cluster"``). The query image is itself in the database, so it is
        listed as ``junk`` (ignored). Each ground-truth entry holds the positives both as
        ``ok`` and as ``easy`` (``hard`` empty), so that :func:`lit.evaluate.classic_map`
        and the Easy/Medium numbers of :func:`lit.evaluate.revisited_map` give the same
        mAP.

        Args:
            positives: ``"pairs"`` or ``"cluster"``.

        Returns:
            ``{"imlist": [cid], "qimlist": [cid], "qidxs": [int], "images": [Path],
            "gnd": [{"bbx": None, "ok": [...], "easy": [...], "hard": [], "junk": [q]}]}``.
        """
        if positives not in ("pairs", "cluster"):
            raise UsageError(f"positives must be 'pairs' or 'cluster', got {positives!r}")
        val = self.val
        queries = list(dict.fromkeys(int(q) for q in val.qidxs))
        pos: dict[int, set[int]] = {q: set() for q in queries}
        if positives == "pairs":
            for q, p in zip(val.qidxs.tolist(), val.pidxs.tolist(), strict=True):
                pos[q].add(p)
        else:
            for q in queries:
                same = np.flatnonzero(val.cluster == val.cluster[q]).tolist()
                pos[q].update(same)
        gnd = []
        for q in queries:
            ok = sorted(pos[q] - {q})
            gnd.append({"bbx": None, "ok": ok, "easy": list(ok), "hard": [], "junk": [q]})
        return {
            "imlist": list(val.cids),
            "qimlist": [val.cids[q] for q in queries],
            "qidxs": queries,
            "images": list(val.images),
            "gnd": gnd,
        }
