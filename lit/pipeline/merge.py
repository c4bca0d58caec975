"""Merging feature files (``lit features merge``): one file of several, names re-based on
their common root, each image once; the new file replaces ``out`` atomically."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .._fileio import atomic_path
from .._image import display_name
from ..distributed import find_shards
from ..errors import FeatureFileError
from ..features import FeatureStore
from .extract import image_names

__all__ = ["MergeSummary", "merge_feature_files"]


@dataclass
class MergeSummary:
    """What :func:`merge_feature_files` did."""

    images: int = 0
    duplicates: list[str] = field(default_factory=list)
    failed: int = 0
    root: str | None = None
    #: global embeddings kept (text search): image tower -> images that have one
    embeddings: dict[str, int] = field(default_factory=dict)


def merge_feature_files(inputs: Sequence[str | os.PathLike], out: str | os.PathLike, overwrite: bool = False) -> MergeSummary:
    """Merge feature files of the same model and settings into a new one.

    An input may also be a set of shards (``torchrun ... lit extract``): its base name, a
    folder or a glob stands for its files, in rank order (:func:`lit.distributed.find_shards`).

    Names are re-based on the common folder of the inputs' roots (files without a
    recorded root keep their names); an image present in several inputs is stored once
    (the first one wins, with every field it has: super-features and the global
    embeddings of each image tower, for text search); failures are kept unless the image
    is present in some input.

    Raises:
        FeatureFileError: fewer than two inputs are readable feature files, fingerprints
            (model or extraction settings) or descriptor dimensions differ, or ``out``
            exists (without ``overwrite``) or is one of the inputs.
    """
    inputs = [f for p in inputs for f in find_shards(p)]
    out = os.fspath(out)
    if len(inputs) < 1:
        raise FeatureFileError("nothing to merge: give feature files")
    if any(os.path.abspath(out) == os.path.abspath(p) for p in inputs):
        raise FeatureFileError(f"{display_name(out)}: the output must not be one of the inputs")
    if os.path.exists(out) and not overwrite:
        raise FeatureFileError(f"{display_name(out)}: already exists (overwrite=True replaces it)",
                               cli=f"{display_name(out)}: already exists (pass --overwrite to replace it)")
    stores = []
    try:
        for p in inputs:
            stores.append(FeatureStore(p))
        first = stores[0]
        for st in stores[1:]:
            if st.fingerprint != first.fingerprint:
                raise FeatureFileError(
                    f"{display_name(st.path)} was made by another model or with other extraction settings than "
                    f"{display_name(first.path)} (fingerprint {st.fingerprint[:12]} vs {first.fingerprint[:12]}): "
                    "features of different models cannot be searched together"
                )
            if st.descriptor_dim != first.descriptor_dim:
                raise FeatureFileError(f"{display_name(st.path)}: descriptor dimension differs from {display_name(first.path)}")
        roots = [st.root for st in stores]
        root = os.path.commonpath(roots) if all(r is not None for r in roots) else None
        summary = MergeSummary(root=display_name(root) if root is not None else None)
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        with atomic_path(out) as tmp, FeatureStore(tmp, "a", descriptor_dim=first.descriptor_dim,
                                                   fingerprint=first.fingerprint, half=all(st.half for st in stores),
                                                   root=root, settings=first.settings or None) as dst:
            have: set[str] = set()
            failures: dict[str, str] = {}
            embedded: dict[str, tuple[list[int], list[np.ndarray]]] = {}  # tower -> (rows of dst, embeddings)
            for st in stores:
                rebase = (lambda n, st=st: image_names([os.path.join(st.root, n)], root)[0]) if root is not None else (lambda n: n)
                st.all_descriptors()  # validates the whole file first
                towers = {t: st.embeddings(t)[1:] for t in st.towers}  # tower -> (embeddings, valid)
                for i, name in enumerate(st.names):
                    new = rebase(name)
                    if new in have:
                        summary.duplicates.append(new)
                        continue
                    have.add(new)
                    for tower, (emb, valid) in towers.items():
                        if valid[i]:
                            rows, vecs = embedded.setdefault(tower, ([], []))
                            rows.append(len(dst))
                            vecs.append(emb[i])
                    dst.append(new, st[i])
            for tower, (rows, vecs) in embedded.items():
                dst.write_embeddings(rows, tower, np.stack(vecs))
                summary.embeddings[tower] = len(rows)
                for name, err in st.failed.items():
                    failures.setdefault(rebase(name), err)
            failures = {k: v for k, v in failures.items() if k not in have}
            if failures:
                dst._write_failures(failures)
            summary.images, summary.failed = len(dst), len(failures)
    finally:
        for st in stores:
            st.close()
    return summary
