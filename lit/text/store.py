"""Global image embeddings in feature files and indexes (what text search reads).

Feature file (``lit extract``): group ``global/<tower>`` with datasets ``embeddings``
``(n, D)`` float32 and ``valid`` ``(n,)`` uint8, row ``i`` for image ``i`` of the file
(rows grow with the file; ``valid`` is 0 where an image has none, e.g. images extracted
before this change). Index file (``lit index``): group ``/text`` with ``names``,
``embeddings``, ``valid`` and attributes ``format = "lit-text"``, ``version``, ``tower``.
"""

from __future__ import annotations

import os
import sys

import h5py
import numpy as np
import torch

GROUP = "global"
INDEX_GROUP = "text"
INDEX_FORMAT = "lit-text"
_STR = h5py.string_dtype("utf-8")


def _embed_hint(features: str) -> str:
    return f"`lit text embed {features} --root IMAGE_FOLDER` adds them (then rerun `lit index`, or pass --index I.h5)"


def write_embedding(h5: h5py.File, row: int, tower: str, embedding) -> None:
    """Store image ``row``'s global embedding ``(D,)`` of ``tower`` in an open feature file."""
    emb = np.asarray(embedding.cpu() if isinstance(embedding, torch.Tensor) else embedding, dtype=np.float32).reshape(-1)
    g = h5.require_group(f"{GROUP}/{tower}")
    if "embeddings" not in g:
        g.create_dataset("embeddings", (0, emb.size), maxshape=(None, emb.size), dtype=np.float32, chunks=(256, emb.size))
        g.create_dataset("valid", (0,), maxshape=(None,), dtype=np.uint8, chunks=(1024,))
    e, v = g["embeddings"], g["valid"]
    if e.shape[1] != emb.size:
        raise ValueError(f"{h5.filename}: {tower} embeddings are {e.shape[1]}-d, got {emb.size}")
    if e.shape[0] <= row:
        n = max(row + 1, 2 * e.shape[0])
        e.resize(n, axis=0)
        v.resize(n, axis=0)
    e[row] = emb
    v[row] = 1


def read_embeddings(features: str | os.PathLike, tower: str | None = None) -> tuple[str, np.ndarray, np.ndarray]:
    """``(tower, embeddings (n, D), valid (n,) bool)`` of a feature file; n = its image count.

    Raises:
        ValueError: the file has no global embeddings (with how to add them).
    """
    features = os.fspath(features)
    with h5py.File(features, "r") as h5:
        n = int(h5.attrs.get("num_images", 0))
        towers = sorted(h5[GROUP]) if GROUP in h5 else []
        if not towers or (tower is not None and tower not in towers):
            what = f"{tower} embeddings" if tower else "global image embeddings"
            raise ValueError(f"{features}: no {what} for text search (made before lit stored them, or with "
                             f"--text-model none): {_embed_hint(features)}")
        tower = tower or towers[0]
        g = h5[f"{GROUP}/{tower}"]
        emb = np.zeros((n, g["embeddings"].shape[1]), np.float32)
        valid = np.zeros(n, bool)
        m = min(n, g["embeddings"].shape[0])
        emb[:m] = g["embeddings"][:m]
        valid[:m] = g["valid"][:m].astype(bool)
    return tower, emb, valid


def add_embeddings(features: str | os.PathLike, root: str | os.PathLike | None, text_model=None,
                   device: str = "cpu", progress: bool = True) -> int:
    """Compute the missing global embeddings of a feature file's images (read again from ``root``).

    Returns:
        The number of images embedded now.
    """
    from .._image import ImageReadError, load_image
    from .factory import load_text_model

    model = text_model if text_model is not None and not isinstance(text_model, str) else load_text_model(text_model, device)
    tower = model.image_tower
    features = os.fspath(features)
    with h5py.File(features, "a") as h5:
        if h5.attrs.get("format") != "lit-features":
            raise ValueError(f"{features}: not a lit feature file")
        n = int(h5.attrs["num_images"])
        names = [s.decode() if isinstance(s, bytes) else s for s in h5["names"][:n]]
        if root is None and h5.attrs.get("root") is not None:  # the root recorded by lit extract
            r = h5.attrs["root"]
            root = r.decode() if isinstance(r, bytes) else str(r)
        key = f"{GROUP}/{tower.name}/valid"
        valid = np.zeros(n, bool)
        if key in h5:
            m = min(n, h5[key].shape[0])
            valid[:m] = h5[key][:m].astype(bool)
        done = 0
        for i in np.flatnonzero(~valid):
            path = os.path.join(root, names[i]) if root is not None and not os.path.isabs(names[i]) else names[i]
            try:
                img = load_image(path, None)
            except (ImageReadError, OSError, ValueError) as err:
                raise ValueError(f"{features}: cannot read image {names[i]!r} for its embedding ({err}); "
                                 "pass --root, the folder the names are relative to") from None
            write_embedding(h5, int(i), tower.name, tower.embed([img])[0])
            done += 1
            if progress and done % 50 == 0:
                print(f"embedded {done} images", file=sys.stderr)
        h5.flush()
    return done


def write_index_embeddings(features: str | os.PathLike, index: str | os.PathLike) -> str:
    """Copy a feature file's global embeddings into group ``/text`` of an index file.

    Returns:
        One line for the user: what was stored, or why text search will not work on it.
    """
    features, index = os.fspath(features), os.fspath(index)
    try:
        tower, emb, valid = read_embeddings(features)
    except ValueError as err:
        return f"note: {err}"
    with h5py.File(features, "r") as h5:
        n = int(h5.attrs["num_images"])
        names = [s.decode() if isinstance(s, bytes) else s for s in h5["names"][:n]]
    with h5py.File(index, "a") as h5:
        if INDEX_GROUP in h5:
            del h5[INDEX_GROUP]
        g = h5.create_group(INDEX_GROUP)
        g.attrs.update({"format": INDEX_FORMAT, "version": 1, "tower": tower, "features": os.path.abspath(features)})
        g.create_dataset("names", data=np.array(names, dtype=object), dtype=_STR)
        g.create_dataset("embeddings", data=emb)
        g.create_dataset("valid", data=valid.astype(np.uint8))
    missing = int((~valid).sum())
    line = f"text search: {int(valid.sum())} global image embeddings ({tower}) stored in {index}"
    if missing:
        line += f"; {missing} images have none and cannot be found by text: {_embed_hint(features)}"
    return line


def read_index_embeddings(index: str | os.PathLike) -> tuple[str, list[str], np.ndarray, np.ndarray]:
    """``(tower, names, embeddings (n, D), valid (n,))`` of an index file.

    Raises:
        ValueError: the index has no text-search group (with how to add it).
    """
    index = os.fspath(index)
    if not os.path.isfile(index):
        raise FileNotFoundError(f"{index}: no such index file")
    with h5py.File(index, "r") as h5:
        if INDEX_GROUP not in h5 or h5[INDEX_GROUP].attrs.get("format") != INDEX_FORMAT:
            raise ValueError(
                f"{index}: no global image embeddings for text search (the index was made before lit stored "
                "them, or from a feature file without them): run `lit text embed FEATURES.h5 --root IMAGE_FOLDER "
                f"--index {index}`")
        g = h5[INDEX_GROUP]
        names = [s.decode() if isinstance(s, bytes) else s for s in g["names"][:]]
        return str(g.attrs["tower"]), names, g["embeddings"][:], g["valid"][:].astype(bool)
