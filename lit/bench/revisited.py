"""Revisited Oxford / Paris end to end: images -> super-features -> ASMK -> the paper's table.

Every stage is cached under ``--cache-dir`` (default ``<data-root>/lit-cache``), keyed by
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
rank 0 merges the lists (:func:`lit.shards.merge_results`) and evaluates. The rankings
and scores are those of one index holding every image (``--save-ranks`` writes them).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lit evaluate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", required=True, help="roxford5k or rparis6k (revisitop layout under --data-root)")
    p.add_argument("--data-root", required=True, help="folder holding <dataset>/gnd_<dataset>.pkl and <dataset>/jpg/")
    p.add_argument("--model", default="fire", help="registered name or checkpoint path (default: fire)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    p.add_argument("--distractors", choices=["r1m"], default=None, help="add the R1M distractors (revisitop1m under --data-root)")
    p.add_argument("--codebook", default=None, help="codebook file (.npy K x d, or an ASMK index file)")
    p.add_argument("--sfm-root", default=None, help="folder with retrieval-SfM-120k/ (for the codebook, FIRe protocol)")
    p.add_argument("--codebook-size", type=int, default=65536, help="k-means words (default 65536)")
    p.add_argument("--codebook-images", type=int, default=20000, help="SfM-120k training images for the codebook (default 20000)")
    p.add_argument("--kmeans-iterations", type=int, default=20)
    p.add_argument("--scales", default=None, help="comma-separated scales (default: the model's)")
    p.add_argument("--features-num", type=int, default=None, help="super-features per image (default: the model's)")
    p.add_argument("--image-size", type=int, default=None, help="longer image side (default: the model's, 1024)")
    p.add_argument("--amp", action="store_true", help="bf16 autocast for extraction (fast path)")
    p.add_argument("--workers", type=int, default=4, help="image decoding processes")
    p.add_argument("--cache-dir", default=None, help="where features, codebook and indexes are cached")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--json", default=None, help="write results and timings here")
    p.add_argument("--save-ranks", default=None, help="write the rankings (.npy, queries x database, revisitop ids) here")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from lit.distributed import env_from_environ, process_group, rank_device

    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else ("cpu" if args.device == "auto" else args.device)
    env = env_from_environ()
    if env is not None:
        if args.distractors != "r1m":
            if not env.is_main:  # only the R1M distractors are sharded; rank 0 does the rest alone
                print(f"rank {env.rank}/{env.world_size}: nothing to do without --distractors r1m", file=sys.stderr)
                return 0
            env = None
        else:
            device = rank_device(device, env)
    if env is None:
        return _run(args, device, None)
    with process_group(device, env):
        return _run(args, device, env)


def _run(args, device: str, env) -> int:
    import lit
    from lit.asmk import ASMK
    from lit.data import RevisitedDataset
    from lit.evaluate import format_table
    from lit.features import FeatureStore, extract_to_file, model_fingerprint

    main_rank = env is None or env.is_main
    timings: dict[str, float] = {}
    t_all = time.perf_counter()
    ds = RevisitedDataset(args.dataset, args.data_root)
    missing = ds.missing_images()
    if missing:
        raise FileNotFoundError(f"{len(missing)} images of {args.dataset} are missing, e.g. {missing[0]}")
    model = lit.load_model(args.model, device=device)
    rt = model.cfg.runtime
    scales = tuple(float(s) for s in args.scales.split(",")) if args.scales else rt.scales
    features_num = args.features_num or rt.features_num
    image_size = args.image_size or rt.image_size
    amp = torch.bfloat16 if args.amp else None
    fp = model_fingerprint(model, scales, features_num, image_size, amp=amp)[:16]  # bf16 features: other cache files
    cache = Path(args.cache_dir or Path(args.data_root) / "lit-cache")
    cache.mkdir(parents=True, exist_ok=True)
    log = (lambda *a: None) if args.quiet else (lambda *a: print(*a, file=sys.stderr))

    def extract(items, name, scales_=scales, out=None):
        out = out or cache / f"{name}-{fp}.h5"
        t = time.perf_counter()
        summary = extract_to_file(model, items, out, scales=scales_, features_num=features_num, image_size=image_size,
                                  num_workers=args.workers, progress=not args.quiet, amp=amp)
        if summary.failed:
            log(summary.report())
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
        codebook, codebook_source = _codebook(args, cache, fp, db_file, extract, device, log)
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
    if args.distractors == "r1m":
        index, lo, count, n_distractors = _r1m_index(args, cache, fp, codebook, extract, device, env)
    else:
        index = ASMK(codebook, device=device)
    last = env is None or env.rank == env.world_size - 1
    if last:  # the dataset's images go to the last part, after every distractor
        with FeatureStore(db_file) as st:
            if len(st) != ds.n_images:
                raise RuntimeError(f"{db_file}: {len(st)} images extracted out of {ds.n_images}")
            desc, ids = st.all_descriptors()
        index.add(desc, ids + n_distractors)
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
            return 0
    ranks = np.asarray(ranks.cpu() if hasattr(ranks, "cpu") else ranks)
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
    print(format_table({name: res}, k=10, title=f"{args.model} | ASMK binary, {codebook.shape[0]} words | {len(scales)} scales, {features_num} features"))
    out = {
        "dataset": name, "model": str(args.model), "device": device, "scales": list(scales), "features_num": features_num,
        "image_size": image_size, "amp": str(amp) if amp is not None else None, "codebook": codebook_source, "codebook_size": int(codebook.shape[0]),
        "distractors": n_distractors, "processes": 1 if env is None else env.world_size, "timings": timings,
        "results": {p: {"map": 100 * r["map"], "mp@k": [100 * v for v in r["mp@k"]]} for p, r in res.items()},
    }
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    print(json.dumps({"dataset": name, "timings": timings}), file=sys.stderr)
    return 0


def _codebook(args, cache: Path, fp: str, db_file: Path, extract, device: str, log):
    """The codebook and where it came from: ``--codebook``, else a cached or new k-means."""
    from lit.asmk import ASMK
    from lit.features import FeatureStore

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
        log("warning: no --codebook or --sfm-root: the codebook is trained on the database itself "
            "(not the paper's protocol, which uses 20k SfM-120k images)")
        with FeatureStore(db_file) as st:
            train_desc = st.all_descriptors()[0]
    size = min(args.codebook_size, len(train_desc))
    codebook = ASMK.train(train_desc, size=size, iterations=args.kmeans_iterations, seed=args.seed, device=device).codebook.cpu().numpy()
    np.save(cb_file, codebook)
    return codebook, str(cb_file)


def _r1m_index(args, cache: Path, fp: str, codebook, extract, device: str, env):
    """The R1M distractor index (ids ``0..n-1``, cached) or, under ``torchrun``, this rank's
    part of it: ``(index, its first id, its image count, n)``.

    Rank ``r`` extracts the ``r``-th block of the image list into its own resumable shard
    and indexes it; ids are positions among the stored images of all ranks (failed images
    leave no gap), as in one process."""
    from lit.asmk import ASMK
    from lit.data import r1m_image_list
    from lit.features import FeatureStore
    from lit.shards import FeatureCollection, part_attrs, shard_path, split_range

    k = int(np.asarray(codebook).shape[0])
    base = cache / f"r1m-index-{fp}-{k}.h5"
    paths = [str(p) for p in r1m_image_list(args.data_root)]
    rank, world = (0, 1) if env is None else (env.rank, env.world_size)
    path = base if env is None else Path(shard_path(base, rank, world))
    if path.is_file():
        index = ASMK.load(path, device=device)
        count = index.n_images if env is None else int(_h5_attr(path, "shard.hi")) - int(_h5_attr(path, "shard.lo"))
        features = None
    else:
        b0, b1 = split_range(len(paths), rank, world)
        feat_base = cache / f"r1m-{fp}.h5"
        features = extract(paths[b0:b1], "r1m", out=feat_base if env is None else Path(shard_path(feat_base, rank, world)))
        with FeatureStore(features) as st:
            count = len(st)
        index = None
    counts = [count]
    if env is not None:
        import torch.distributed as dist

        counts = [None] * world
        dist.all_gather_object(counts, count)
    lo, n = sum(counts[:rank]), sum(counts)
    if index is None:
        index = ASMK(codebook, device=device)
        with FeatureCollection(features) as coll:  # chunks of whole images, checked (bounded memory)
            for desc, ids in coll.iter_descriptors():
                index.add(desc, ids + lo)
        index.save(path, attrs=None if env is None else part_attrs(rank, world, lo, lo + count))
    return index, lo, count, n


def _h5_attr(path: Path, key: str):
    import h5py

    with h5py.File(path, "r") as h:
        return h.attrs[key]


def _merged_search(index, qdesc, qids, columns: tuple[int, int], env, n_total: int):
    """Full rankings of a sharded index: each rank ranks ``columns``; rank 0 gets the merge
    (``None`` on the others)."""
    import torch.distributed as dist

    from lit.shards import merge_results

    part = index.search(qdesc, qids, columns=columns)
    gathered = [None] * env.world_size if env.is_main else None
    dist.gather_object((part.ranks.cpu(), part.scores.cpu()), gathered, dst=0)
    if not env.is_main:
        return None
    from lit.asmk.index import SearchResult

    merged = merge_results([SearchResult(r, s) for r, s in gathered], None)
    if merged.ranks.shape[1] != n_total:
        raise RuntimeError(f"merged rankings hold {merged.ranks.shape[1]} images, expected {n_total}")
    return merged.ranks


def _synchronize(device) -> None:
    """Wait for the device's queued work, so that a timer stops after it (no-op on CPU)."""
    if str(device).startswith("cuda"):
        torch.cuda.synchronize(device)


if __name__ == "__main__":
    sys.exit(main())
