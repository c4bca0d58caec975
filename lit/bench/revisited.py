"""Revisited Oxford / Paris end to end: images -> super-features -> ASMK -> the paper's table.

``lit evaluate`` and ``benchmarks/revisited.py`` run :func:`run_revisited` with a
:class:`RevisitedConfig`. Every stage is cached under ``cache_dir`` (default ``<data-root>/lit-cache``), keyed by
the model's fingerprint: feature files resume where they stopped, the codebook and the
distractor index are computed once.

Codebook (in order of preference): ``--codebook FILE`` (``.npy`` K x d, or an index file);
with ``--sfm-root``, k-means on super-features of ``--codebook-images`` (FIRe: 20,000)
random SfM-120k training images at scale 1 (the FIRe protocol); otherwise k-means on the
database's own descriptors (a warning says it is not the paper's protocol).

With ``--distractors r1m`` the million distractors can be spread over processes:
``torchrun --nproc_per_node N -m lit evaluate ... --distractors r1m`` (or with
``--nnodes``/a rendezvous across machines sharing the cache folder). Rank 0 extracts the
dataset and trains the codebook; rank ``r`` extracts the ``r``-th block of R1M into its own
resumable shard, indexes it (cached per rank), and ranks its id range for every query;
rank 0 merges the lists (:func:`lit.asmk.sharded.merge_results`) and evaluates. The rankings
and scores are those of one index holding every image (``--save-ranks`` writes them).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)

__all__ = ["RevisitedConfig", "run_revisited"]


@dataclass(frozen=True)
class RevisitedConfig:
    """Options of the revisited benchmark (``lit evaluate --help`` describes each).

    Args:
        dataset: ``roxford5k`` or ``rparis6k`` (revisitop layout under ``data_root``).
        data_root: folder holding ``<dataset>/gnd_<dataset>.pkl`` and ``<dataset>/jpg/``.
        model: registered name or checkpoint path.
        device: ``auto``, ``cpu`` or ``cuda``.
        distractors: ``"r1m"`` adds the R1M distractors (revisitop1m under ``data_root``).
        codebook: a codebook file (``.npy`` K x d, or an index file).
        sfm_root: folder with retrieval-SfM-120k/ (codebook of the FIRe protocol).
        codebook_size, codebook_images, kmeans_iterations: k-means words, SfM-120k images
            and iterations of the codebook.
        scales, features_num, image_size: extraction settings (``None``: the model's).
        amp: bf16 autocast for extraction (fast path).
        workers: image decoding processes.
        cache_dir: where features, codebook and indexes are cached (default
            ``<data_root>/lit-cache``).
        seed: k-means seed.
        progress: progress bars.
        save_ranks: write the rankings (``.npy``, queries x database, revisitop ids) here.
        rerank, expand: re-rank the top ``rerank`` of each query by verified super-feature
            matches and expand queries with the top ``expand`` verified images
            (:mod:`lit.pipeline.rerank`; not with the R1M distractors yet).
    """

    dataset: str
    data_root: str
    model: str = "fire"
    device: str = "auto"
    distractors: str | None = None
    codebook: str | None = None
    sfm_root: str | None = None
    codebook_size: int = 65536
    codebook_images: int = 20000
    kmeans_iterations: int = 20
    scales: tuple[float, ...] | None = None
    features_num: int | None = None
    image_size: int | None = None
    amp: bool = False
    workers: int = 4
    cache_dir: str | None = None
    seed: int = 0
    progress: bool = True
    save_ranks: str | None = None
    rerank: int = 0
    expand: int = 0


def run_revisited(cfg: RevisitedConfig) -> dict | None:
    """Run the benchmark; returns its results (``table``: the paper's table as text; ``None``
    on the ranks of a ``torchrun`` job other than 0)."""
    from lit._device import resolve_device
    from lit.distributed import env_from_environ, process_group

    device = str(resolve_device(cfg.device))
    env = env_from_environ()
    if env is not None:
        if cfg.distractors != "r1m":
            if not env.is_main:  # only the R1M distractors are sharded; rank 0 does the rest alone
                log.info(f"rank {env.rank}/{env.world_size}: nothing to do without --distractors r1m")
                return None
            env = None
    if env is None:
        return _run(cfg, device, None)
    with process_group(device, env):
        return _run(cfg, device, env)


def _run(args: RevisitedConfig, device: str, env) -> dict | None:
    import lit
    from lit.data import RevisitedDataset
    from lit.errors import NotFoundError, PipelineError, UsageError
    from lit.evaluate import format_table
    from lit.features import FeatureStore, open_features
    from lit.pipeline import extract_to_file, index_collection, model_fingerprint

    if (args.rerank or args.expand) and args.distractors:
        raise UsageError("re-ranking with the R1M distractors is not supported yet (their features are not kept)")
    main_rank = env is None or env.is_main
    timings: dict[str, float] = {}
    t_all = time.perf_counter()
    ds = RevisitedDataset(args.dataset, args.data_root)
    missing = ds.missing_images()
    if missing:
        raise NotFoundError(f"{len(missing)} images of {args.dataset} are missing, e.g. {missing[0]}")
    model = lit.load_model(args.model, device=device)
    rt = model.cfg.runtime
    scales = tuple(args.scales) if args.scales else rt.scales
    features_num = args.features_num or rt.features_num
    image_size = args.image_size or rt.image_size
    amp = torch.bfloat16 if args.amp else None
    fp = model_fingerprint(model, scales, features_num, image_size, amp=amp)[:16]  # bf16 features: other cache files
    cache = Path(args.cache_dir or Path(args.data_root) / "lit-cache")
    cache.mkdir(parents=True, exist_ok=True)

    def extract(items, name, scales_=scales, out=None):
        out = out or cache / f"{name}-{fp}.h5"
        t = time.perf_counter()
        summary = extract_to_file(model, items, out, scales=scales_, features_num=features_num, image_size=image_size,
                                  num_workers=args.workers, progress=args.progress, amp=amp)
        if summary.failed:
            log.warning(summary.report())
        timings[f"extract_{name}_s"] = time.perf_counter() - t
        return out

    # the dataset and the codebook: rank 0 (the other ranks of a sharded R1M run wait)
    db_file = cache / f"{args.dataset}-db-{fp}.h5"
    q_file = cache / f"{args.dataset}-queries-{fp}.h5"
    codebook, codebook_source = None, args.codebook
    if main_rank:
        extract(ds.images, f"{args.dataset}-db")
        extract([(p, ds.query_bbox(i)) for i, p in enumerate(ds.queries)], f"{args.dataset}-queries")
        t = time.perf_counter()
        codebook, codebook_source = _codebook(args, cache, fp, db_file, extract, device)
        timings["codebook_s"] = time.perf_counter() - t
    if env is not None:
        import torch.distributed as dist

        box = [codebook_source]
        dist.broadcast_object_list(box, src=0)
        codebook_source = box[0]
        if not main_rank:
            from lit.pipeline import load_codebook

            codebook = load_codebook(codebook_source)[0]

    # index: distractors first (cached), then the dataset's images
    t = time.perf_counter()
    n_distractors = 0
    lo = count = 0  # this rank's ids: lo..lo+count-1 (sharded R1M: rank r holds the r-th block)
    index = None
    if args.distractors == "r1m":
        index, lo, count, n_distractors = _r1m_index(args, cache, fp, codebook, extract, device, env)
    last = env is None or env.rank == env.world_size - 1
    if last:  # the dataset's images go to the last part, after every distractor
        with open_features(db_file) as coll:
            if len(coll) != ds.n_images:
                raise PipelineError(f"{db_file}: {len(coll)} images extracted out of {ds.n_images}")
            index = index_collection(codebook, coll, id_offset=n_distractors, index=index, device=device)
    index.flush()  # the CSR merge (a sort of every entry) is indexing time, not search time
    _synchronize(device)
    timings["index_s"] = time.perf_counter() - t

    _synchronize(device)
    t = time.perf_counter()
    with FeatureStore(q_file) as st:
        qdesc, qids = st.all_descriptors()
    if env is None:
        ranks, _ = index.search(qdesc, qids)
    else:  # every rank ranks its id range; rank 0 merges the lists (same ranks and scores)
        hi = n_distractors + ds.n_images if last else lo + count
        ranks = _merged_search(index, qdesc, qids, (lo, hi), env, n_distractors + ds.n_images)
        if not main_rank:
            return None
    ranks = np.asarray(ranks.cpu() if hasattr(ranks, "cpu") else ranks)
    if args.rerank or args.expand:  # search_s below includes it; rerank_s alone
        t_r = time.perf_counter()
        ranks = _reranked(args, model, index, db_file, q_file, ds.n_images, image_size, device, ranks)
        timings["rerank_s"] = time.perf_counter() - t_r
    # dataset images first (0..n-1), distractors after (n..), as revisitop expects
    is_db = ranks >= n_distractors
    ranks = np.where(is_db, ranks - n_distractors, ranks + ds.n_images)
    timings["search_s"] = time.perf_counter() - t
    timings["search_ms_per_query"] = 1000 * timings["search_s"] / ds.n_queries
    res = ds.evaluate(ranks.T)
    timings["total_s"] = time.perf_counter() - t_all
    if args.save_ranks:
        np.save(args.save_ranks, ranks)

    name = args.dataset + ("+1M" if n_distractors else "")
    table = format_table({name: res}, k=10, title=f"{args.model} | ASMK binary, {codebook.shape[0]} words | "
                                                   f"{len(scales)} scales, {features_num} features")
    return {
        "dataset": name, "model": str(args.model), "device": device, "scales": list(scales), "features_num": features_num,
        "image_size": image_size, "amp": str(amp) if amp is not None else None, "codebook": codebook_source, "codebook_size": int(codebook.shape[0]),
        "rerank": args.rerank, "expand": args.expand, "distractors": n_distractors, "processes": 1 if env is None else env.world_size, "timings": timings,
        "results": {p: {"map": 100 * r["map"], "mp@k": [100 * v for v in r["mp@k"]]} for p, r in res.items()},
        "table": table,
    }


def _reranked(args, model, index, db_file, q_file, n_images: int, image_size, device, ranks) -> np.ndarray:
    """Rankings re-ranked by :func:`lit.pipeline.search` with a reranker over the dataset's
    feature file (queries x database ids, as ``index.search`` gives them)."""
    from lit.features import FeatureStore, open_features
    from lit.index_file import IndexInfo
    from lit.pipeline import Reranker, RerankSettings, search

    with open_features(db_file) as coll, FeatureStore(q_file) as qs:
        queries = [qs[i] for i in range(len(qs))]
        info = IndexInfo(names=tuple(str(i) for i in range(n_images)))
        reranker = Reranker(coll.__getitem__, model.match_rule(), RerankSettings(image_size=image_size), device=device)
        res = search(index, info, queries, [str(i) for i in range(len(queries))], topk=None, rerank=args.rerank,
                     expand=args.expand, reranker=reranker)
    out = np.array(ranks, copy=True)
    for qi, r in enumerate(res):
        if r.hits:
            out[qi, : len(r.hits)] = [int(h.name) for h in r.hits]
    return out


def _codebook(args, cache: Path, fp: str, db_file: Path, extract, device: str):
    """The codebook and where it came from: ``--codebook``, else a cached or new k-means
    (:func:`lit.pipeline.train_codebook`, the codebook policy of ``lit index``)."""
    from lit.features import FeatureStore
    from lit.pipeline import train_codebook

    if args.codebook:
        from lit.pipeline import load_codebook

        return load_codebook(args.codebook)[0], args.codebook
    cb_file = cache / f"codebook-{fp}-{args.codebook_size}-{args.seed}-{'sfm' if args.sfm_root else args.dataset}.npy"
    if cb_file.is_file():
        return np.load(cb_file, allow_pickle=False), str(cb_file)
    if args.sfm_root:
        from lit.data import SfM120k

        train = SfM120k(args.sfm_root).train
        rng = np.random.default_rng(args.seed)
        pick = rng.choice(len(train.images), size=min(args.codebook_images, len(train.images)), replace=False)
        sfm_file = extract([train.images[i] for i in sorted(pick)], "sfm120k-codebook", scales_=(1.0,))
        with FeatureStore(sfm_file) as st:
            train_desc = st.all_descriptors()[0]
    else:
        log.warning("no --codebook or --sfm-root: the codebook is trained on the database itself "
                    "(not the paper's protocol, which uses 20k SfM-120k images)")
        with FeatureStore(db_file) as st:
            train_desc = st.all_descriptors()[0]
    size = min(args.codebook_size, len(train_desc))
    codebook = train_codebook(train_desc, size, seed=args.seed, device=device,
                              iterations=args.kmeans_iterations).cpu().numpy()
    np.save(cb_file, codebook)
    return codebook, str(cb_file)


def _r1m_index(args, cache: Path, fp: str, codebook, extract, device: str, env):
    """The R1M distractor index (ids ``0..n-1``, cached) or, under ``torchrun``, this rank's
    part of it: ``(index, its first id, its image count, n)``.

    Rank ``r`` extracts the ``r``-th block of the image list into its own resumable shard
    and indexes it; ids are positions among the stored images of all ranks (failed images
    leave no gap), as in one process."""
    from lit.data import r1m_image_list
    from lit.distributed import shard_path, split_range
    from lit.features import open_features
    from lit.index_file import IndexInfo, Part, load_index, write_index
    from lit.pipeline import index_collection

    k = int(np.asarray(codebook).shape[0])
    base = cache / f"r1m-index-{fp}-{k}.h5"
    paths = [str(p) for p in r1m_image_list(args.data_root)]
    rank, world = (0, 1) if env is None else (env.rank, env.world_size)
    path = base if env is None else Path(shard_path(base, rank, world))
    index = features = None
    if path.is_file():  # cached: its names are this rank's images
        index, info = load_index(path, device=device)
        count = len(info.names)
    else:
        b0, b1 = split_range(len(paths), rank, world)
        feat_base = cache / f"r1m-{fp}.h5"
        features = extract(paths[b0:b1], "r1m", out=feat_base if env is None else Path(shard_path(feat_base, rank, world)))
        with open_features(features) as coll:
            count = len(coll)
    counts = [count]
    if env is not None:
        import torch.distributed as dist

        counts = [None] * world
        dist.all_gather_object(counts, count)
    lo, n = sum(counts[:rank]), sum(counts)
    if index is None:
        with open_features(features) as coll:  # chunks of whole images, checked (bounded memory)
            index = index_collection(codebook, coll, id_offset=lo, device=device)
            info = IndexInfo(names=tuple(coll.names), fingerprint=coll.fingerprint, features=str(features),
                             codebook_source="benchmark", codebook_size=k, descriptors=coll.num_features)
        write_index(path, index, info, part=None if env is None else Part(rank, world, lo, lo + count))
    return index, lo, count, n


def _merged_search(index, qdesc, qids, columns: tuple[int, int], env, n_total: int):
    """Full rankings of a sharded index: each rank ranks ``columns``; rank 0 gets the merge
    (``None`` on the others)."""
    import torch.distributed as dist

    from lit.asmk.sharded import merge_results

    part = index.search(qdesc, qids, columns=columns)
    gathered = [None] * env.world_size if env.is_main else None
    dist.gather_object((part.ranks.cpu(), part.scores.cpu()), gathered, dst=0)
    if not env.is_main:
        return None
    from lit.asmk import SearchResult

    merged = merge_results([SearchResult(r, s) for r, s in gathered], None)
    if merged.ranks.shape[1] != n_total:
        raise RuntimeError(f"merged rankings hold {merged.ranks.shape[1]} images, expected {n_total}")
    return merged.ranks


def _synchronize(device) -> None:
    """Wait for the device's queued work, so that a timer stops after it (no-op on CPU)."""
    if str(device).startswith("cuda"):
        torch.cuda.synchronize(device)

