"""Index building: one codebook policy and one way to fill an index, for a single index, a
sharded one (in one process or one part per ``torchrun`` rank), the demo and the benchmarks.

- :func:`choose_codebook`: a given codebook (fingerprint checked) or k-means on the database
  or on ``train_features`` (fingerprint checked), of :func:`codebook_size` words, best of
  :func:`kmeans_restarts` runs; a small training set is warned about.
- :func:`index_collection`: streams a feature collection (a file or a shard set) into an ASMK
  index in bounded chunks, optionally one id range and with an id offset.
- :func:`build_index`: both, in memory: ``(index, info)``.
- :func:`make_index`: both, written to disk (:mod:`lit.index_file`), with the text-search
  embeddings of the feature file; ``parts > 1`` or ``torchrun`` writes a sharded index whose
  codebook is trained once (on rank 0) and broadcast.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from .._image import display_name
from ..asmk import ASMK
from ..distributed import (
    broadcast_tensor,
    env_from_environ,
    find_shards,
    process_group,
    shard_path,
    split_range,
)
from ..errors import FeatureFileError, PipelineError, UsageError
from ..features import FeatureCollection, open_features
from ..index_file import IndexInfo, Part, TextEmbeddings, part_info, text_part, write_index
from .codebook import codebook_size, kmeans_restarts, small_set_warning, train_codebook
from .search import check_fingerprint

log = logging.getLogger(__name__)

__all__ = ["CodebookChoice", "IndexSummary", "build_index", "choose_codebook", "index_collection", "make_index"]


@dataclass(frozen=True)
class CodebookChoice:
    """A codebook and where it came from (recorded in the index)."""

    codebook: Any  # (K, D) tensor or array
    source: str = "database"
    descriptors: int = 0  # descriptors it was learned on (0: given)


def choose_codebook(collection: FeatureCollection, *, codebook=None, codebook_source: str | None = None,
                    codebook_fingerprint: str | None = None, size: int | None = None,
                    train_features: str | os.PathLike | None = None, seed: int = 0, iterations: int = 20,
                    device: str | torch.device = "cpu", force: bool = False) -> CodebookChoice:
    """The codebook of an index of ``collection`` (see the module docstring).

    Raises:
        FingerprintError: training features or codebook of another model (without ``force``).
        PipelineError: no descriptors to learn on; ``size`` beyond the training descriptors.
    """
    where = display_name(collection.path)
    if codebook is not None:
        check_fingerprint(collection.fingerprint, codebook_fingerprint, f"the codebook {codebook_source or ''}".rstrip(),
                          where, force)
        return CodebookChoice(codebook, codebook_source or "given", 0)
    if train_features is not None:
        train_features = os.fspath(train_features)
        with open_features(train_features) as ts:
            check_fingerprint(collection.fingerprint, ts.fingerprint, f"the training features {train_features}", where, force)
            train, n_images = ts.all_descriptors()[0], len(ts)
        source = os.path.abspath(train_features)
    else:
        train, n_images, source = collection.all_descriptors()[0], len(collection), "database"
    if len(train) == 0:
        raise PipelineError(f"{display_name(train_features or collection.path)}: no descriptors to learn a codebook on")
    k = codebook_size(len(train)) if size is None else int(size)
    if not 1 <= k <= len(train):
        raise PipelineError(f"codebook size {k} must be in 1..{len(train)} (the training descriptors)")
    warning = small_set_warning(len(train), n_images)
    if warning:
        log.warning(warning)
    runs = kmeans_restarts(len(train))
    log.info(f"training a codebook of {k} words on {len(train)} descriptors"
             + (f" (best of {runs} k-means runs)" if runs > 1 else ""))
    cb = train_codebook(train, k, seed=seed, restarts=runs, device=device, iterations=iterations, progress=True)
    return CodebookChoice(cb, source, len(train))


def index_collection(codebook, collection: FeatureCollection, *, lo: int = 0, hi: int | None = None,
                     id_offset: int = 0, index: ASMK | None = None, device: str | torch.device = "cpu",
                     **params: Any) -> ASMK:
    """Stream images ``lo..hi-1`` of ``collection`` into an index (image id = collection
    position + ``id_offset``), at most about :data:`lit.features.STREAM_ROWS` descriptors at a
    time.

    Args:
        codebook: the codebook of a new index (ignored when ``index`` is given).
        index: add to this index instead of a new one.
        params: ASMK options of a new index (``binary``, ``use_idf``, ...).
    """
    if index is None:
        index = ASMK(codebook, device=device, **params)
    hi_ = len(collection) if hi is None else hi
    t0 = time.perf_counter()
    log.info(f"quantising {collection.count_features(lo, hi_)} descriptors of {hi_ - lo} images into the index")
    for desc, ids in collection.iter_descriptors(lo, hi):
        index.add(desc, ids + id_offset)
    log.info(f"  done in {time.perf_counter() - t0:.1f} s")
    return index


#: database descriptors on which the codebook's quantisation error is measured (recorded in
#: the index: `lit add` compares the new photos' error to it, :mod:`lit.pipeline.live`)
ERROR_SAMPLE = 20_000


def quantization_error(index: ASMK, descriptors, nearest=None) -> float:
    """Mean squared distance of descriptors to their nearest word of the index's codebook
    (``nearest``: those words when already known)."""
    x = torch.as_tensor(np.asarray(descriptors, np.float32))
    if x.shape[0] == 0:
        return 0.0
    words = (index.quantize(x, 1)[:, 0] if nearest is None else torch.as_tensor(nearest)).cpu()
    return float(((x - index.codebook.cpu()[words]) ** 2).sum(1).mean())


def extraction_settings(collection: FeatureCollection) -> dict:
    """The extraction settings a collection records (what new photos must be extracted with)."""
    settings = dict(collection.settings or {})
    stores = getattr(collection, "stores", None)
    if stores:
        settings["half"] = bool(stores[0].half)
    return settings


def _info(collection: FeatureCollection, choice: CodebookChoice, index: ASMK, image_root) -> IndexInfo:
    root = os.path.abspath(os.fspath(image_root)) if image_root is not None else collection.root
    sample = next(iter(collection.iter_descriptors(0, None, max_rows=ERROR_SAMPLE)), (np.zeros((0, index.dim)),))[0]
    return IndexInfo(names=tuple(collection.names), image_root=root, fingerprint=collection.fingerprint or None,
                     features=os.path.abspath(collection.path), codebook_source=choice.source,
                     codebook_size=index.num_words, codebook_descriptors=choice.descriptors,
                     descriptors=collection.num_features, settings=extraction_settings(collection) or None,
                     codebook_error=quantization_error(index, sample[:ERROR_SAMPLE]))


def build_index(features: str | os.PathLike, *, codebook=None, codebook_source: str | None = None,
                codebook_fingerprint: str | None = None, size: int | None = None,
                train_features: str | os.PathLike | None = None, image_root: str | os.PathLike | None = None,
                seed: int = 0, binary: bool = True, use_idf: bool = False, device: str | torch.device = "cpu",
                force: bool = False):
    """Train (or take) a codebook and index a feature file (or a shard set) with ASMK, in memory.

    Args:
        features: the database feature file (``lit extract``).
        codebook: a given codebook (K x d) instead of training one; ``codebook_source`` says
            where it comes from and ``codebook_fingerprint`` is checked against the database.
        size: codebook words; default :func:`codebook_size` of the training descriptors.
        train_features: learn the codebook on this feature file instead of the database
            (its fingerprint must match the database's).
        image_root: folder the database names are relative to (default: the one the feature
            file records, if any).
        seed: k-means seed.
        binary, use_idf: ASMK options (FIRe: binary, no idf).
        device: device of k-means and of the index.
        force: go on (with a warning) when fingerprints differ.

    Returns:
        ``(index, info)``: an :class:`lit.asmk.ASMK` and its :class:`IndexInfo`.

    Raises:
        PipelineError: empty feature file, size larger than the training descriptors.
        FingerprintError: training features or codebook of another model (without ``force``).
    """
    with open_features(features) as coll:
        if len(coll) == 0:
            raise PipelineError(f"{display_name(coll.path)}: no images in this feature file")
        choice = choose_codebook(coll, codebook=codebook, codebook_source=codebook_source,
                                 codebook_fingerprint=codebook_fingerprint, size=size, train_features=train_features,
                                 seed=seed, device=device, force=force)
        index = index_collection(choice.codebook, coll, device=device, binary=binary, use_idf=use_idf)
        return index, _info(coll, choice, index, image_root)


def _existing_parts(out: str) -> list[str]:
    """The parts of a sharded index ``out`` already on disk."""
    try:
        return find_shards(out) if not os.path.isfile(out) else []
    except (OSError, ValueError):
        return []


@dataclass
class IndexSummary:
    """What :func:`make_index` wrote (filled on the main process; others get ``parts`` only)."""

    out: str
    parts: int
    info: IndexInfo | None = None
    stats: dict = field(default_factory=dict)
    text_note: str = ""


def _text_of(collection: FeatureCollection) -> tuple[TextEmbeddings | None, str]:
    """The collection's global embeddings for ``/text``, and one line for the user."""
    try:
        tower, emb, valid = collection.embeddings()
    except FeatureFileError as err:
        return None, f"note: no text search on this index: {err}"
    text = TextEmbeddings(tower, list(collection.names), emb, valid, os.path.abspath(collection.path))
    line = f"text search: {int(valid.sum())} global image embeddings ({tower}) stored"
    missing = int((~valid).sum())
    if missing:
        line += (f"; {missing} images have none and cannot be found by text: `lit text embed "
                 f"{display_name(collection.path)} --root IMAGE_FOLDER` adds them (then rerun `lit index`)")
    return text, line


def make_index(features: str | os.PathLike, out: str | os.PathLike, *, parts: int = 1, codebook=None,
               codebook_source: str | None = None, codebook_fingerprint: str | None = None, size: int | None = None,
               train_features: str | os.PathLike | None = None, image_root: str | os.PathLike | None = None,
               seed: int = 0, binary: bool = True, use_idf: bool = False, device: str | torch.device = "cpu",
               force: bool = False, overwrite: bool = False) -> IndexSummary:
    """Build the index of a feature collection and write it (``lit index``).

    One file ``out`` (``parts == 1`` outside ``torchrun``), or a sharded index
    ``shard_path(out, r, N)``: ``N = parts`` built in this process, or one part per rank under
    ``torchrun`` (``N`` = the world size), the codebook trained once on rank 0 and broadcast.
    The feature file's global embeddings go to ``/text`` (text search). An existing index
    (file or parts) is replaced only with ``overwrite=True`` (atomically: a reader of the
    old one keeps it); without it :class:`PipelineError` says so before anything is read.

    Returns:
        An :class:`IndexSummary` (info and stats on the main process).
    """
    if parts < 1:
        raise UsageError(f"parts must be >= 1, got {parts}")
    out = os.fspath(out)
    env = env_from_environ()
    existing = [p for p in ([out] if (env is None and parts == 1) else []) + _existing_parts(out) if os.path.exists(p)]
    if existing and not overwrite:
        shown = display_name(existing[0])
        raise PipelineError(f"{shown}: already exists (overwrite=True replaces it)",
                            cli=f"{shown}: already exists (pass --overwrite to replace it)")
    with open_features(features) as coll:
        if len(coll) == 0:
            raise PipelineError(f"{display_name(coll.path)}: no images in this feature file")
        with process_group(device, env):
            main = env is None or env.is_main
            choice = None
            if main:
                choice = choose_codebook(coll, codebook=codebook, codebook_source=codebook_source,
                                         codebook_fingerprint=codebook_fingerprint, size=size,
                                         train_features=train_features, seed=seed, device=device, force=force)
            if env is not None:  # every rank builds with rank 0's codebook
                cb = broadcast_tensor(torch.as_tensor(np.asarray(choice.codebook)) if main else None, device)
                choice = CodebookChoice(cb, choice.source if main else "", choice.descriptors if main else 0)
            ranks, world = (range(parts), parts) if env is None else ([env.rank], env.world_size)
            text, text_note = _text_of(coll)
            stats = []
            info = None
            for r in ranks:
                lo, hi = split_range(len(coll), r, world)
                index = index_collection(choice.codebook, coll, lo=lo, hi=hi, device=device, binary=binary,
                                         use_idf=use_idf)
                info = _info(coll, choice, index, image_root)
                if world == 1:
                    write_index(out, index, info, text=text)
                else:
                    part = replace(part_info(info, lo, hi), descriptors=coll.count_features(lo, hi))
                    write_index(shard_path(out, r, world), index, part, text=text_part(text, lo, hi),
                                part=Part(r, world, lo, hi))
                stats.append(index.stats())
                del index
            if env is not None:
                import torch.distributed as dist

                gathered: list[Any] = [None] * env.world_size
                dist.all_gather_object(gathered, stats)
                stats = [s for g in gathered for s in g]
    summary = IndexSummary(out, world)
    if main:
        summary.info = info
        summary.text_note = text_note
        summary.stats = {"images": sum(s["images"] for s in stats), "vectors": sum(s["vectors"] for s in stats),
                         "bytes": sum(s["bytes"] for s in stats), "parts": world, "words": stats[0]["words"]}
    return summary

