"""The collection pipeline as library stages: index a feature file, search it, write results.

Like hloc's stage modules, each function reads and writes files in documented formats and
makes one policy choice that users rely on; the command line (``lit index``, ``lit search``,
``lit match``), the demo and the benchmarks call these functions, so every policy exists
once:

- :func:`codebook_size`: how many visual words for a number of training descriptors,
- :func:`build_index` / :func:`save_index` / :func:`load_index`: a self-contained index file
  (names, image root, codebook, parameters and the model fingerprint in one HDF5 file),
- :func:`check_fingerprint`: queries and codebooks must come from the model (and extraction
  settings) that made the index,
- :func:`search`: ranked results under one name convention, optionally without the query
  itself, and :func:`write_json`, :func:`write_csv`, :func:`write_pairs`,
- :func:`match_rule` / :func:`match_images`: a model's own match rule (threshold and
  background test).

Index file: what :meth:`lit.asmk.ASMK.save` writes (codebook, parameters, inverted file)
plus a group ``/pipeline`` written by :func:`save_index`:

=========================  ===================================================================
``/pipeline`` item         content
=========================  ===================================================================
``names`` (n,) str         database image names, relative to ``image_root``; row i = image id i
attr ``format``            ``"lit-index-pipeline"``; attr ``version`` 1
attr ``image_root``        folder the names are relative to (absolute; ``""`` if unknown)
attr ``fingerprint``       fingerprint of the feature file (model weights + extraction settings)
attr ``features``          path of the feature file the index was built from
attr ``codebook_source``   ``"database"``, the ``--train-features`` file, or a codebook file
attr ``codebook_size``     visual words K; attr ``codebook_descriptors``: descriptors it was learned on
attr ``descriptors``       database descriptors indexed
=========================  ===================================================================

Score (``score`` in every output): the ASMK similarity of the query to a database image
(SPEC section 3), sum over the visual words they share of the selective kernel
``sigma(w) = max(0, 1 - 2 * hamming / d) ** 3`` (binary), divided by the square roots of the
number of words of each image. It is 1 for an image compared with itself when every
descriptor is assigned to one word; with the default query multiple assignment (each query
descriptor counts in its 5 nearest words) the query has up to 5 times as many words, most
of them absent from the database image, and its aggregated residuals change, so even the
image itself scores far below 1 (0.026 for a held-out photo with the default codebook). Only the order of
the scores of one query matters; scores of different queries are not comparable.
"""

from __future__ import annotations

import csv
import json
import math
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .errors import FingerprintError, PipelineError, UsageError
from .matching import MatchRule  # noqa: F401 - re-exported: it lives in lit.matching

PIPELINE_GROUP = "pipeline"
PIPELINE_FORMAT = "lit-index-pipeline"
PIPELINE_VERSION = 1

#: the codebook has ``CODEBOOK_WORDS_PER_SQRT * sqrt(n)`` words for ``n`` training descriptors
#: (benchmarks/pipeline_defaults.py: inside the flat top of the mAP-vs-size curve on the
#: held-out multi-view scenes and on the training scenes; FIRe's 65,536 words are reached at about 30M descriptors, and its 20k SfM-120k
#: images x 1000 features give 54k)
CODEBOOK_WORDS_PER_SQRT = 12
MAX_CODEBOOK_SIZE = 65536
#: below this many training descriptors the codebook is noisy (a warning says so), and
#: k-means is run ``SMALL_SET_RESTARTS`` times, keeping the codebook of least quantisation error
SMALL_CODEBOOK_DESCRIPTORS = 100_000
SMALL_SET_RESTARTS = 4


# ---------------------------------------------------------------------------- inputs
def gather_images(inputs: Sequence[str], list_file: str | None = None) -> tuple[list[str], str | None]:
    """Image paths from folders, files and a list file, and the root of their names.

    Folders are searched recursively for images (:func:`lit._image.list_images`); lines of
    the list file (blank and ``#`` lines skipped) are paths relative to its folder. The root
    is :func:`lit.features.common_root` of the folder and file arguments and the listed
    files: one folder gives that folder.

    Raises:
        UsageError: an argument that does not exist, a missing list file, or no image at all.
    """
    from ._image import display_name, list_images
    from .features import common_root

    paths: list[str] = []
    anchors: list[str] = []
    for item in inputs:
        if os.path.isdir(item):
            paths.extend(list_images(item))
            anchors.append(item)
        elif os.path.exists(item):
            paths.append(item)
            anchors.append(item)
        else:
            raise UsageError(f"{display_name(item)}: no such file or directory")
    if list_file:
        if not os.path.isfile(list_file):
            raise UsageError(f"{list_file}: no such list file")
        base = os.path.dirname(list_file)
        with open(list_file, encoding="utf-8", errors="surrogateescape") as f:  # names need not be UTF-8
            for line in f:
                line = line.strip()
                if line and not line.startswith("#"):
                    paths.append(line if os.path.isabs(line) else os.path.join(base, line))
                    anchors.append(paths[-1])
    if not paths:
        raise UsageError("no images given (folders are searched for .jpg/.png/... files)")
    return paths, common_root(anchors)


# ---------------------------------------------------------------------------- codebook
def codebook_size(n_descriptors: int, max_size: int = MAX_CODEBOOK_SIZE) -> int:
    """Visual words for a codebook learned on ``n_descriptors`` descriptors.

    ``K = round(12 * sqrt(n))``, at most ``max_size`` (FIRe: 65536) and at most ``n // 2``
    (so that k-means has at least two descriptors per word), but at least ``min(n, 8)``
    (ASMK's query multiple assignment needs 5 words). Chosen by
    measurement (``benchmarks/pipeline_defaults.py``): on the 20 held-out multi-view photos
    (5,120 descriptors of lit-effl0) the sizes 512-1536 words are within the noise of each
    other (30 k-means seeds each: 50.3-52.1 mAP, 1024 best; the default 859 gives 51.1),
    FIRe's ratio (~300 per word) gives 16 words there and 20 mAP less; a square-root rule
    meets FIRe's 65,536 words near its own scale (54k words for 20M descriptors).

    Raises:
        ValueError: ``n_descriptors < 1``.
    """
    n = int(n_descriptors)
    if n < 1:
        raise ValueError(f"a codebook needs at least one descriptor, got {n_descriptors}")
    k = int(round(CODEBOOK_WORDS_PER_SQRT * math.sqrt(n)))
    return max(min(n, 8), min(k, int(max_size), n // 2))


def small_set_warning(n_descriptors: int, n_images: int) -> str | None:
    """A warning for a codebook learned on few descriptors, else ``None``."""
    if n_descriptors >= SMALL_CODEBOOK_DESCRIPTORS:
        return None
    return (f"warning: the codebook is learned on only {n_descriptors} descriptors ({n_images} images); "
            f"retrieval on small sets varies with the k-means seed by several mAP: "
            f"--train-features FILE learns it on a larger set of similar photos")


def kmeans_restarts(n_descriptors: int) -> int:
    """k-means runs for a codebook learned on ``n_descriptors``: :data:`SMALL_SET_RESTARTS`
    on small sets (where one run is cheap and retrieval varies by several mAP from one seed to
    another; the run of least quantisation error retrieves better: correlation -0.66 over 8
    seeds on the held-out multi-view photos), 1 otherwise."""
    return SMALL_SET_RESTARTS if n_descriptors < SMALL_CODEBOOK_DESCRIPTORS else 1


def quantisation_error(descriptors: torch.Tensor, codebook: torch.Tensor, chunk: int = 65536) -> float:
    """Mean squared distance of each descriptor to its nearest centroid (k-means objective).

    Shape:
        - descriptors: :math:`(N, D)`; codebook: :math:`(K, D)` (on the codebook's device).
    """
    x = torch.as_tensor(descriptors).to(codebook.device, torch.float32)
    total = torch.zeros((), dtype=torch.float64, device=codebook.device)
    for a in range(0, len(x), chunk):
        total += torch.cdist(x[a:a + chunk], codebook.float()).amin(1).double().pow(2).sum()
    return float(total.cpu()) / max(1, len(x))


def train_codebook(descriptors, size: int, seed: int = 0, restarts: int | None = None,
                   device: str | torch.device = "cpu") -> torch.Tensor:
    """k-means codebook, best of ``restarts`` runs (default :func:`kmeans_restarts`) by
    :func:`quantisation_error`; run r uses seed ``seed * restarts + r``.

    Shape:
        - descriptors: :math:`(N, D)`; returns :math:`(K, D)` on ``device``.
    """
    from .asmk import ASMK

    restarts = kmeans_restarts(len(descriptors)) if restarts is None else int(restarts)
    if restarts < 1:
        raise ValueError(f"restarts must be >= 1, got {restarts}")
    best, best_err = None, math.inf
    for r in range(restarts):
        cb = ASMK.train(descriptors, size=size, seed=seed * restarts + r, device=device).codebook
        err = quantisation_error(descriptors, cb) if restarts > 1 else 0.0
        if err < best_err:
            best, best_err = cb, err
    return best


def load_codebook(path: str | os.PathLike) -> tuple[np.ndarray, str | None]:
    """A codebook from ``.npy`` (K x d float) or from an index file; returns it and the
    fingerprint recorded with it (``None`` for ``.npy`` or an index without one)."""
    path = os.fspath(path)
    if path.endswith(".npy"):
        if not os.path.isfile(path):
            raise PipelineError(f"{path}: no such codebook file")
        try:
            cb = np.load(path, allow_pickle=False)
        except ValueError as err:
            raise PipelineError(f"{path}: not a numpy codebook ({err})") from None
        if cb.ndim != 2 or not np.issubdtype(cb.dtype, np.floating):
            raise PipelineError(f"{path}: a codebook is a K x d float array, got {cb.dtype} {cb.shape}")
        return cb.astype(np.float32), None
    from .asmk import ASMK

    info = read_index_info(path)
    return ASMK.load(path).codebook.cpu().numpy(), (info.fingerprint if info is not None else None)


# ---------------------------------------------------------------------------- index
@dataclass(frozen=True)
class IndexInfo:
    """What the index knows about its database (the ``/pipeline`` group).

    Args:
        names: database image names, relative to ``image_root``; name i has image id i.
        image_root: absolute folder of the images, ``None`` if unknown.
        fingerprint: the database feature file's fingerprint (model + extraction settings).
        features: path of that feature file.
        codebook_source: ``"database"``, a feature file or a codebook file.
        codebook_size: visual words.
        codebook_descriptors: descriptors the codebook was learned on (0 if given).
        descriptors: database descriptors indexed.
        legacy: read from an old ``.names.json`` sidecar (no fingerprint).
    """

    names: tuple[str, ...]
    image_root: str | None = None
    fingerprint: str | None = None
    features: str = ""
    codebook_source: str = "database"
    codebook_size: int = 0
    codebook_descriptors: int = 0
    descriptors: int = 0
    legacy: bool = field(default=False, compare=False)


def _feature_root(store) -> str | None:
    h5 = store.stores[0].h5 if hasattr(store, "stores") else store.h5  # a shard set: its first shard
    for key in ("root", "image_root"):
        value = h5.attrs.get(key)
        if value:
            return os.path.abspath(value.decode() if isinstance(value, bytes) else str(value))
    return None


def check_fingerprint(expected: str | None, actual: str | None, what: str, against: str, force: bool = False,
                      warn: Callable[[str], None] | None = None) -> None:
    """Refuse ``what`` (queries, a codebook) made by another model than ``against``.

    Fingerprints cover the model's weights and config and the extraction settings (scales,
    super-features per image, image size), see :func:`lit.features.model_fingerprint`.
    Unknown fingerprints (``None`` or empty) are not checked. With ``force`` a mismatch is a
    warning (printed by ``warn``, default stderr) instead of an error.

    Raises:
        FingerprintError: the fingerprints differ and ``force`` is false.
    """
    if not expected or not actual or expected == actual:
        return
    msg = (f"{what} come from another model or other extraction settings than {against} "
           f"(fingerprint {actual[:12]} vs {expected[:12]})")
    if not force:
        raise FingerprintError(msg + ": use the same --model, --scales, --features-num and --image-size, or --force")
    (warn or (lambda m: print(m, file=sys.stderr)))(f"warning: {msg}; going on (--force)")


def build_index(
    features: str | os.PathLike,
    *,
    codebook: np.ndarray | None = None,
    codebook_source: str | None = None,
    codebook_fingerprint: str | None = None,
    size: int | None = None,
    train_features: str | os.PathLike | None = None,
    image_root: str | os.PathLike | None = None,
    seed: int = 0,
    binary: bool = True,
    use_idf: bool = False,
    device: str | torch.device = "cpu",
    force: bool = False,
    log: Callable[[str], None] | None = None,
):
    """Train (or take) a codebook and index a feature file with ASMK.

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
        log: where progress and warnings go (default stderr).

    Returns:
        ``(index, info)``: an :class:`lit.asmk.ASMK` and its :class:`IndexInfo`.

    Raises:
        PipelineError: empty feature file, size larger than the training descriptors.
        FingerprintError: training features or codebook of another model (without ``force``).
    """
    from .asmk import ASMK
    from .features import FeatureStore
    from .shards import open_features

    log = log or (lambda m: print(m, file=sys.stderr))
    features = os.fspath(features)
    # the database's descriptors are held only to train the codebook on them; otherwise
    # they are streamed into the index in chunks (bounded memory)
    on_database = codebook is None and train_features is None
    with open_features(features) as store:  # one feature file or a set of shards
        desc, ids = store.all_descriptors() if on_database else (None, None)
        n_descriptors = store.num_features
        names = tuple(store.names)
        fp = store.fingerprint
        root = _feature_root(store)
    if not names:
        raise PipelineError(f"{features}: no images in this feature file")
    if image_root is not None:
        root = os.path.abspath(os.fspath(image_root))
    if codebook is not None:
        check_fingerprint(fp, codebook_fingerprint, f"the codebook {codebook_source or ''}".rstrip(), features, force, log)
        cb_desc, source = 0, codebook_source or "given"
    else:
        train, source = desc, "database"
        if train_features is not None:
            train_features = os.fspath(train_features)
            with FeatureStore(train_features) as ts:
                check_fingerprint(fp, ts.fingerprint, f"the training features {train_features}", features, force, log)
                train = ts.all_descriptors()[0]
                n_train_images = len(ts)
            source = os.path.abspath(train_features)
        else:
            n_train_images = len(names)
        if len(train) == 0:
            raise PipelineError(f"{train_features or features}: no descriptors to learn a codebook on")
        k = codebook_size(len(train)) if size is None else int(size)
        if not 1 <= k <= len(train):
            raise PipelineError(f"codebook size {k} must be in 1..{len(train)} (the training descriptors)")
        warning = small_set_warning(len(train), n_train_images)
        if warning:
            log(warning)
        runs = kmeans_restarts(len(train))
        log(f"training a codebook of {k} words on {len(train)} descriptors"
            + (f" (best of {runs} k-means runs)" if runs > 1 else ""))
        codebook = train_codebook(train, k, seed=seed, restarts=runs, device=device)
        cb_desc = len(train)
    index = ASMK(codebook, binary=binary, use_idf=use_idf, device=device)
    if desc is not None:
        index.add(desc, ids)
        del desc, ids
    else:
        from .shards import add_collection

        with open_features(features) as store:
            add_collection(index, store)
    info = IndexInfo(names=names, image_root=root, fingerprint=fp or None, features=os.path.abspath(features),
                     codebook_source=source, codebook_size=index.num_words, codebook_descriptors=cb_desc,
                     descriptors=n_descriptors)
    return index, info


def save_index(index, info: IndexInfo, path: str | os.PathLike) -> None:
    """Write ``index`` (:meth:`ASMK.save`) and ``info`` (group ``/pipeline``) to one file."""
    import h5py

    path = os.fspath(path)
    index.save(path)
    with h5py.File(path, "a") as f:
        if PIPELINE_GROUP in f:
            del f[PIPELINE_GROUP]
        g = f.create_group(PIPELINE_GROUP)
        g.attrs.update({"format": PIPELINE_FORMAT, "version": PIPELINE_VERSION, "image_root": info.image_root or "",
                        "fingerprint": info.fingerprint or "", "features": info.features,
                        "codebook_source": info.codebook_source, "codebook_size": info.codebook_size,
                        "codebook_descriptors": info.codebook_descriptors, "descriptors": info.descriptors})
        raw = [os.fsencode(n) for n in info.names]  # bytes: names that are not valid UTF-8 survive
        g.create_dataset("names", data=np.array(raw, dtype=object), dtype=h5py.special_dtype(vlen=bytes))


def _str_attr(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def read_index_info(path: str | os.PathLike) -> IndexInfo | None:
    """The ``/pipeline`` group of an index file, the old ``.names.json`` sidecar (a note
    on stderr), or ``None`` when there is neither."""
    import h5py

    path = os.fspath(path)
    if h5py.is_hdf5(path):
        with h5py.File(path, "r") as f:
            if PIPELINE_GROUP in f:
                g = f[PIPELINE_GROUP]
                if _str_attr(g.attrs.get("format", "")) != PIPELINE_FORMAT or int(g.attrs.get("version", -1)) != PIPELINE_VERSION:
                    raise PipelineError(f"{path}: index metadata of format {_str_attr(g.attrs.get('format', ''))!r} "
                                        f"version {g.attrs.get('version')} (this lit reads {PIPELINE_FORMAT!r} {PIPELINE_VERSION})")
                names = tuple(os.fsdecode(bytes(n)) for n in g["names"][()])
                a = g.attrs
                return IndexInfo(names=names, image_root=_str_attr(a["image_root"]) or None,
                                 fingerprint=_str_attr(a["fingerprint"]) or None, features=_str_attr(a["features"]),
                                 codebook_source=_str_attr(a["codebook_source"]), codebook_size=int(a["codebook_size"]),
                                 codebook_descriptors=int(a["codebook_descriptors"]), descriptors=int(a["descriptors"]))
    side = path + ".names.json"
    if os.path.isfile(side):
        try:
            with open(side) as f:
                data = json.load(f)
            names = tuple(data["names"])
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise PipelineError(f"{side}: not a readable names file ({err})") from None
        if data.get("sharded"):  # the parts of a sharded index (lit.distributed): names beside them
            return IndexInfo(names=names, image_root=data.get("image_root"), fingerprint=data.get("fingerprint"),
                             features=str(data.get("features", "")))
        print(f"note: {path} is an index of an older lit: names read from {side}, no fingerprint check; "
              "rebuild it with `lit index` to make it self-contained", file=sys.stderr)
        return IndexInfo(names=names, features=str(data.get("features", "")), legacy=True)
    return None


def load_index(path: str | os.PathLike, device: str | torch.device = "cpu"):
    """Read an index file; returns ``(index, info)``.

    Raises:
        FileNotFoundError, ValueError: unreadable index (message names the file).
        PipelineError: no names (neither ``/pipeline`` nor a ``.names.json`` sidecar), or
            fewer names than indexed images.
    """
    from .asmk import ASMK

    path = os.fspath(path)
    index = ASMK.load(path, device=device)
    info = read_index_info(path)
    if info is None:
        raise PipelineError(f"{path}: the index holds no image names (not written by `lit index`)")
    if len(info.names) < index.n_images:
        raise PipelineError(f"{path}: {len(info.names)} names for {index.n_images} indexed images")
    return index, info


# ---------------------------------------------------------------------------- search
@dataclass(frozen=True)
class Hit:
    rank: int
    name: str
    score: float


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
    queries: Sequence,
    query_names: Sequence[str],
    *,
    topk: int | None = 10,
    exclude_self: bool = False,
    query_root: str | None = None,
) -> list[QueryResult]:
    """Rank the database for each query.

    Args:
        index: an :class:`lit.asmk.ASMK` (e.g. from :func:`load_index`).
        info: its :class:`IndexInfo` (names).
        queries: :class:`lit.types.LocalFeatures` of each query (any device).
        query_names: name of each query, relative to ``query_root``.
        topk: results per query (``None``: all database images).
        exclude_self: leave out the database image that is the query itself (same real
            path when both roots are known, else the same name).
        query_root: folder the query names are relative to.

    Returns:
        One :class:`QueryResult` per query, hits best first, ranks from 1.
    """
    if len(queries) != len(query_names):
        raise ValueError(f"{len(queries)} queries for {len(query_names)} names")
    if topk is not None and (not isinstance(topk, int) or topk < 1):
        raise ValueError(f"topk must be a positive int or None, got {topk!r}")
    if not queries:
        return []
    n_db = index.n_images
    qdesc = torch.cat([q.descriptors.detach().cpu().float() for q in queries]).numpy()
    qids = np.concatenate([np.full(len(q), i, dtype=np.int64) for i, q in enumerate(queries)])
    want = n_db if topk is None or exclude_self else min(n_db, topk)
    ranks, scores = index.search(qdesc, qids, topk=want)
    ranks, scores = torch.as_tensor(ranks).cpu().numpy(), torch.as_tensor(scores).cpu().numpy()  # a sharded index returns numpy
    present = sorted(set(qids.tolist()))  # queries without descriptors have no row
    row_of = {q: r for r, q in enumerate(present)}
    out = []
    for qi, qname in enumerate(query_names):
        hits = []
        if qi in row_of:
            itself = _same_image(qname, query_root, info.names, info.image_root) if exclude_self else set()
            for i, s in zip(ranks[row_of[qi]].tolist(), scores[row_of[qi]].tolist(), strict=True):
                if i in itself:
                    continue
                hits.append(Hit(len(hits) + 1, info.names[i], float(s)))
        out.append(QueryResult(qname, tuple(hits if topk is None else hits[:topk])))
    return out


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
    with open(path, "w", errors="surrogateescape") as f:
        json.dump(results_to_dict(results, db_root, query_root), f, indent=1)


def write_csv(results: Sequence[QueryResult], path: str | os.PathLike) -> None:
    """CSV with header ``query,rank,name,score`` (scores with 6 significant digits); file
    names are written as bytes (surrogateescape), like the file system has them."""
    with open(path, "w", newline="", encoding="utf-8", errors="surrogateescape") as f:
        w = csv.writer(f)
        w.writerow(["query", "rank", "name", "score"])
        for r in results:
            for h in r.hits:
                w.writerow([r.query, h.rank, h.name, f"{h.score:.6g}"])


def write_pairs(results: Sequence[QueryResult], path: str | os.PathLike) -> None:
    """``query_name db_name`` per line (hloc / kapture pairs), each name relative to its root."""
    with open(path, "w", encoding="utf-8", errors="surrogateescape") as f:
        for r in results:
            for h in r.hits:
                f.write(f"{r.query} {h.name}\n")


def scene_of(name: str) -> str | None:
    """The scene folder of a name (its first folder), ``None`` for a bare file name."""
    parts = Path(name).parts
    return parts[0] if len(parts) > 1 else None


def plot_paths(path: str | os.PathLike, n: int) -> list[str]:
    """One figure path per query: ``path`` itself for one query, else ``stem_001.ext``..."""
    path = os.fspath(path)
    if n == 1:
        return [path]
    stem, ext = os.path.splitext(path)
    return [f"{stem}_{i + 1:03d}{ext}" for i in range(n)]


def plot_results(results: Sequence[QueryResult], out: str | os.PathLike, db_root: str, query_root: str | None,
                 topk: int = 8) -> list[str]:
    """One retrieval figure per query (:func:`lit.viz.plot_retrieval`), titled with names
    and scores; correct / incorrect marks when query and results sit in scene folders.

    Raises:
        PipelineError: an image to show does not exist (names the folder option to fix it).
    """
    from . import viz

    written = []
    for r, path in zip(results, plot_paths(out, len(results)), strict=True):
        qpath = os.path.join(query_root, r.query) if query_root else r.query
        if not os.path.isfile(qpath):
            raise PipelineError(f"{qpath}: query image not found for --plot (give its folder with --query-root)")
        hits = r.hits[:topk]
        dbp = [os.path.join(db_root, h.name) for h in hits]
        missing = [p for p in dbp if not os.path.isfile(p)]
        if missing:
            raise PipelineError(f"{missing[0]}: database image not found for --plot (give its folder with --db-root)")
        qs = scene_of(r.query)
        rel = None
        if qs is not None and all(scene_of(h.name) is not None for h in hits):
            rel = [scene_of(h.name) == qs for h in hits]
        fig = viz.plot_retrieval(qpath, dbp, scores=[h.score for h in hits], relevant=rel, topk=topk,
                                 titles=[f"#{h.rank} {h.name}" for h in hits], query_title=f"query: {r.query}")
        written.append(viz.save_figure(fig, path))
    return written


# ---------------------------------------------------------------------------- matching
def match_rule(model, threshold: float | None | str = "model", margin: float | None | str = "model") -> MatchRule:
    """The match rule of ``model``: ``model.match_rule(threshold, margin)`` (the rule travels
    in the model's config and weights: FIRe's cosine >= 0.9, lit-effl0's background test)."""
    return model.match_rule(threshold, margin)


def match_threshold(model) -> float | None:
    """The cosine threshold of ``model``'s match rule (``None``: no floor)."""
    return model.match_rule().threshold


def match_images(model, image_a, image_b, *, threshold: float | None | str = "model", ratio: float | None = None,
                 margin: float | None | str = "model", scales=None, features_num=None, image_size=None):
    """Load, extract and match two images with the model's rule (:func:`match_rule`) unless
    ``threshold`` / ``margin`` are given.

    Returns:
        ``(image_a, image_b, feats_a, feats_b, matches, rule)``; images as loaded
        (3 x H x W tensors), features as :meth:`model.extract` gives them, the
        :class:`MatchRule` used.
    """
    from ._image import load_image

    rule = model.match_rule(threshold, margin)
    size = model.cfg.runtime.image_size if image_size is None else image_size
    img_a, img_b = load_image(image_a, size), load_image(image_b, size)
    fa = model.extract(img_a, scales=scales, features_num=features_num)
    fb = model.extract(img_b, scales=scales, features_num=features_num)
    return img_a, img_b, fa, fb, rule.match(fa, fb, ratio=ratio), rule
