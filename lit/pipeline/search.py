"""Search: queries under one name convention, checked against the index's model, ranked.

- :func:`check_fingerprint`: queries and codebooks must come from the model and extraction
  settings that made the index;
- :func:`open_index`: an index file, a sharded index searched part by part, or, under
  ``torchrun``, this rank's part with the lists of every rank merged (:class:`RankPartIndex`);
- :func:`queries_from_features` / :func:`queries_from_images`: query features and their names
  (relative to a query root, with ``/``, like stored names);
- :func:`search`: ranked results, optionally without the query itself.

Score (``score`` in every output): the ASMK similarity of the query to a database image
(see :mod:`lit.asmk`): over the visual words they share, the sum of the selective kernel
``max(0, 1 - 2 hamming / d) ** 3`` (binary), divided by the square roots of the number of
words of each image. Only the order of the scores of one query matters.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .._image import ImageReadError, ImageTooSmallError, display_name, load_image, open_image
from ..asmk import SearchResult
from ..asmk.sharded import ShardedIndex, merge_results
from ..distributed import DistEnv, env_from_environ, process_group
from ..errors import FingerprintError, UsageError
from ..features import open_features
from ..index_file import IndexInfo, load_index
from ..types import LocalFeatures
from .extract import gather_images, image_names, model_fingerprint, too_small_message
from .rerank import expand_query

log = logging.getLogger(__name__)

__all__ = [
    "Hit", "Queries", "QueryResult", "RankPartIndex", "check_fingerprint", "open_index", "queries_from_features",
    "queries_from_images", "search",
]


def check_fingerprint(expected: str | None, actual: str | None, what: str, against: str, force: bool = False) -> None:
    """Refuse ``what`` (queries, a codebook) made by another model than ``against``.

    Fingerprints cover the model's weights and config and the extraction settings (scales,
    super-features per image, image size), see :func:`model_fingerprint`. Unknown
    fingerprints (``None`` or empty) are not checked. With ``force`` a mismatch is a logged
    warning instead of an error.

    Raises:
        FingerprintError: the fingerprints differ and ``force`` is false.
    """
    if not expected or not actual or expected == actual:
        return
    msg = (f"{what} come from another model or other extraction settings than {against} "
           f"(fingerprint {actual[:12]} vs {expected[:12]})")
    if not force:
        raise FingerprintError(msg + ": use the same model and extraction settings (scales, features_num, image_size), "
                               "or force=True", cli=msg + ": use the same --model, --scales, --features-num and "
                               "--image-size, or --force")
    log.warning(f"{msg}; going on (--force)")


# ---------------------------------------------------------------------------- indexes
class RankPartIndex:
    """Part ``rank`` of a sharded index, searched by every rank of a ``torchrun`` job; the
    per-part top-k lists are gathered and merged, so every rank gets the full result."""

    def __init__(self, sharded: ShardedIndex, env: DistEnv) -> None:
        if len(sharded.files) != env.world_size:
            raise UsageError(f"{display_name(sharded.files[0])}...: a sharded index of {len(sharded.files)} parts needs "
                             f"--nproc_per_node {len(sharded.files)} (got {env.world_size} processes)")
        self.sharded, self.env = sharded, env
        sharded.keep, sharded.home = False, env.rank
        self.params = sharded.params
        self.n_images = sharded.n_images

    def search(self, qdescriptors, qimage_ids, topk: int | None = None, *, words=None) -> SearchResult:
        import torch.distributed as dist

        x, words = self.sharded.prepare(qdescriptors, words)
        mine = self.sharded.part_search(self.env.rank, x, qimage_ids, topk, words)
        with process_group(self.sharded.device, self.env):
            gathered: list[Any] = [None] * self.env.world_size
            dist.all_gather_object(gathered, (mine.ranks.cpu(), mine.scores.cpu()))
        return merge_results([SearchResult(r, s) for r, s in gathered], topk)


def open_index(path: str | os.PathLike, device: str | torch.device = "cpu"):
    """An index for searching, and its :class:`IndexInfo`: one file, a sharded index searched
    part by part, or under ``torchrun`` this rank's part of it (:class:`RankPartIndex`)."""
    path = os.fspath(path)
    env = env_from_environ()
    if env is None or os.path.isfile(path):
        return load_index(path, device)
    sharded, info = load_index(path, device, keep_parts=False)
    return RankPartIndex(sharded, env), info


# ---------------------------------------------------------------------------- queries
@dataclass(frozen=True)
class Queries:
    """Query features, their names (relative to ``root``) and that root."""

    features: list[LocalFeatures]
    names: list[str]
    root: str | None


def queries_from_features(path: str | os.PathLike, info: IndexInfo, *, root: str | os.PathLike | None = None,
                          force: bool = False, against: str = "the index") -> Queries:
    """Every image of a feature file (or shard set) as a query.

    The query root is ``root`` when given, else the one the file records, else (a file of
    an early lit) the index's image root when it is the index's own feature file.

    Raises:
        FingerprintError: the file comes from another model than the index (without ``force``).
    """
    path = os.fspath(path)
    with open_features(path) as qs:
        check_fingerprint(info.fingerprint, qs.fingerprint, f"the query features {display_name(path)}", against, force)
        names = list(qs.names)
        feats = [qs[i] for i in range(len(qs))]
        query_root = os.path.abspath(os.fspath(root)) if root is not None else qs.root
    if query_root is None and os.path.realpath(path) == os.path.realpath(info.features or ""):
        query_root = info.image_root  # the index's own feature file
    return Queries(feats, names, query_root)


def queries_from_images(model, inputs: Sequence[str], info: IndexInfo, *, list_file: str | None = None,
                        root: str | os.PathLike | None = None, scales=None, features_num: int | None = None,
                        image_size: int | None = None, force: bool = False, model_name: str = "the model",
                        against: str = "the index") -> Queries:
    """Extract query images (files, folders, a list file) with ``model``.

    Names are relative to ``root`` when given, else to the deepest folder holding every
    input (:func:`gather_images`), with ``/`` like stored names; without ``root``, a name
    given as files (not folders) keeps the folder holding its photo (``scene/02.jpg``
    for the single file ``photos/scene/02.jpg``), its scene for the marks of plots. Unreadable images are
    skipped with a logged line.

    Raises:
        FingerprintError: the model and settings differ from the index's (without ``force``).
        UsageError: no readable query image.
    """
    paths, common = gather_images(inputs, list_file)
    query_root = os.path.abspath(os.fspath(root)) if root is not None else common
    if (root is None and common and not any(os.path.isdir(i) for i in inputs)
            and any("/" not in n for n in image_names(paths, common))):
        # photos given as files of one folder: keep the folder holding them in their names
        # (``scene/02.jpg``, not ``02.jpg``), which is what marks results as the same scene
        query_root = os.path.dirname(common.rstrip(os.sep)) or common
    rt = model.cfg.runtime
    scales = tuple(scales) if scales else rt.scales
    features_num = features_num or rt.features_num
    size = rt.image_size if image_size is None else image_size
    check_fingerprint(info.fingerprint, model_fingerprint(model, scales, features_num, size),
                      f"queries extracted with {model_name}", against, force)
    names, feats = [], []
    for path, name in zip(paths, image_names(paths, query_root), strict=True):
        try:
            decoded = open_image(path, size)
            img = load_image(decoded, size)
        except ImageReadError as err:
            log.warning(f"skipped: {err}", extra={"lit_plain": True})
            continue
        try:
            feats.append(model.extract(img, scales=scales, features_num=features_num))
        except ImageTooSmallError as err:  # named with the file's own size, not the resized one
            raise ImageTooSmallError(f"{display_name(path)}: {too_small_message(err, decoded.size, img, size)}") from None
        names.append(name)
    if not feats:
        raise UsageError("no readable query images")
    return Queries(feats, names, query_root)


# ---------------------------------------------------------------------------- search
@dataclass(frozen=True)
class Hit:
    """One result: ``score`` is the ASMK score, or after re-ranking ``support + ASMK score`` for
    a verified image; ``support``: the distinct query super-features (templates) among its
    geometrically verified matches (``None``: not checked;
    :attr:`lit.pipeline.rerank.PairCheck.support`);
    ``calibrated``: the text-search score in standard deviations above chance
    (:mod:`lit.text.calibration`), ``None`` for image queries."""

    rank: int
    name: str
    score: float
    support: int | None = None
    calibrated: float | None = None


@dataclass(frozen=True)
class QueryResult:
    """Results of one query: ``query`` is its name (relative to the query root)."""

    query: str
    hits: tuple[Hit, ...]


def _same_image(qname: str, query_root: str | None, db_names: Sequence[str], db_root: str | None) -> set[int]:
    """Database ids that are the query itself: same real path when both roots are known,
    else (query root unknown) the same name."""
    if db_root and query_root:
        key = os.path.realpath(os.path.join(query_root, qname))
        return {i for i, n in enumerate(db_names) if os.path.realpath(os.path.join(db_root, n)) == key}
    return {i for i, n in enumerate(db_names) if n == qname}


def search(
    index,
    info: IndexInfo,
    queries: Sequence[LocalFeatures],
    query_names: Sequence[str],
    *,
    topk: int | None = 10,
    exclude_self: bool = False,
    query_root: str | None = None,
    rerank: int = 0,
    expand: int = 0,
    reranker=None,
    keep_unscored: bool = False,
    verify_queries: Sequence[LocalFeatures] | None = None,
) -> list[QueryResult]:
    """Rank the database for each query.

    Args:
        index: an :class:`lit.asmk.ASMK` (e.g. from :func:`open_index`).
        info: its :class:`IndexInfo` (names).
        queries: :class:`lit.types.LocalFeatures` of each query (any device).
        query_names: name of each query, relative to ``query_root``.
        topk: results per query (``None``: all database images).
        exclude_self: leave out the database image that is the query itself (same real
            path when both roots are known, else the same name).
        query_root: folder the query names are relative to.
        rerank: re-rank the top ``rerank`` of each list by verified super-feature matches
            (``0``: ASMK alone), see :mod:`lit.pipeline.rerank`.
        expand: expand each query with the verified super-features of its top ``expand``
            verified images and search again (``0``: no expansion).
        reranker: the :class:`lit.pipeline.rerank.Reranker` that verifies (needed with
            ``rerank`` or ``expand``; :func:`lit.pipeline.rerank.reranker_for`).
        keep_unscored: also list database images with score 0 (they share no visual word
            with the query: their order is only the database order). By default a list
            stops at the last positive score.
        verify_queries: what the reranker verifies of each query when it is not the query's
            super-features: its local tokens (:class:`lit.models.TokenExtractor`), for a
            reranker over the database's tokens. Query expansion needs super-features.

    Returns:
        One :class:`QueryResult` per query, hits best first, ranks from 1.
    """
    if len(queries) != len(query_names):
        raise UsageError(f"{len(queries)} queries for {len(query_names)} names")
    if topk is not None and (not isinstance(topk, int) or topk < 1):
        raise UsageError(f"topk must be a positive int or None, got {topk!r}")
    for name, value in (("rerank", rerank), ("expand", expand)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise UsageError(f"{name} must be an int >= 0, got {value!r}")
    if (rerank or expand) and reranker is None:
        raise UsageError("re-ranking and query expansion need a reranker (lit.pipeline.reranker_for)")
    if verify_queries is not None:
        if len(verify_queries) != len(queries):
            raise UsageError(f"{len(verify_queries)} verification features for {len(queries)} queries")
        if expand:
            raise UsageError("query expansion adds verified super-features to the query: it needs verification by "
                             "super-features, not tokens")
    checked = queries if verify_queries is None else verify_queries
    if not queries:
        return []
    n_db = index.n_images
    need = max(topk or n_db, rerank)
    want = n_db if topk is None or exclude_self else min(n_db, need)
    lists = _asmk_lists(index, queries, want)
    out = []
    expanded: dict[int, LocalFeatures] = {}
    for qi, qname in enumerate(query_names):
        itself = _same_image(qname, query_root, info.names, info.image_root) if exclude_self and qi in lists else set()
        ids, scores = lists.get(qi, ([], []))
        keep = [k for k, i in enumerate(ids) if i not in itself]
        ids, scores = [ids[k] for k in keep], [scores[k] for k in keep]
        support: list[int | None] = [None] * len(ids)
        if rerank and ids:
            ids, scores, support, checks = reranker.rerank(checked[qi], ids, scores, rerank)
            if expand:
                good = [k for k in range(len(checks)) if reranker.is_verified(support[k])][:expand]
                if good:
                    expanded[qi] = expand_query(queries[qi], [reranker.database(ids[k]) for k in good],
                                                [checks[k] for k in good])
        out.append([qname, ids, scores, support, itself])
    if expanded:
        again = _asmk_lists(index, [expanded[qi] for qi in sorted(expanded)], want)
        for row, qi in enumerate(sorted(expanded)):
            ids, scores = again.get(row, ([], []))
            itself = out[qi][4]
            keep = [k for k, i in enumerate(ids) if i not in itself]
            ids, scores = [ids[k] for k in keep], [scores[k] for k in keep]
            ids, scores, support, _ = reranker.rerank(queries[qi], ids, scores, rerank)
            out[qi][1:4] = ids, scores, support
    results = []
    for qname, ids, scores, support, _ in out:
        if not keep_unscored:  # scores are sorted: the rest share no visual word with the query
            cut = next((k for k, s in enumerate(scores) if not s > 0), len(scores))
            ids, scores, support = ids[:cut], scores[:cut], support[:cut]
        hits = [Hit(r + 1, info.names[i], float(s), k) for r, (i, s, k) in enumerate(zip(ids, scores, support, strict=True))]
        results.append(QueryResult(qname, tuple(hits if topk is None else hits[:topk])))
    return results


def _asmk_lists(index, queries: Sequence[LocalFeatures], want: int) -> dict[int, tuple[list[int], list[float]]]:
    """ASMK ranked lists (database ids and scores, best first) of each query with descriptors."""
    qdesc = torch.cat([q.descriptors.detach().cpu().float() for q in queries]).numpy()
    qids = np.concatenate([np.full(len(q), i, dtype=np.int64) for i, q in enumerate(queries)])
    ranks, scores = index.search(qdesc, qids, topk=want)
    ranks, scores = torch.as_tensor(ranks).cpu().numpy(), torch.as_tensor(scores).cpu().numpy()
    present = sorted(set(qids.tolist()))  # queries without descriptors have no row
    return {q: (ranks[r].tolist(), scores[r].tolist()) for r, q in enumerate(present)}
