"""Sharded extraction, indexing and search with torch.distributed (``torchrun``).

The same commands as on one process; ``torchrun`` sets ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK`` (also across nodes with ``--nnodes`` and a rendezvous endpoint), and lit
splits the work by rank:

- ``torchrun --nproc_per_node N -m lit extract IMAGES --out feats.h5``: rank ``r`` extracts
  the ``r``-th contiguous block of the image list into its own resumable shard
  ``feats.RRRRR-of-NNNNN.h5`` (:func:`lit.shards.shard_path`); rerunning with the same
  ``N`` resumes every shard. No collective is needed (each rank prints its own line), so
  ranks never wait for each other. Every reader accepts the shard set as one collection
  (:class:`lit.shards.FeatureCollection`).
- ``torchrun --nproc_per_node N -m lit index feats.h5 --out index.h5``: rank 0 trains the
  codebook (once, exactly as a single process would), broadcasts it (gloo on CPU, NCCL on
  GPU), and rank ``r`` builds part ``r`` of a sharded index, the images of the ``r``-th id
  range, into ``index.RRRRR-of-NNNNN.h5``. ``lit index --shards N`` builds the same parts
  in one process.
- ``torchrun --nproc_per_node N -m lit search index.h5 ...``: rank ``r`` searches part
  ``r``; the per-part top-k lists are gathered and merged on every rank
  (:func:`lit.shards.merge_results`) and rank 0 writes the results. Without ``torchrun``
  the parts are searched in turn. Either way the ranks and scores equal those of one
  index holding every image.

All ranks must see the same files (a shared file system across nodes).
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from .shards import ShardedIndex, find_shards, merge_results, shard_path, split_range


@dataclass(frozen=True)
class DistEnv:
    """Where this process stands in a ``torchrun`` job."""

    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_from_environ(environ: dict[str, str] | None = None) -> DistEnv | None:
    """The ``torchrun`` environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``), or ``None``
    outside ``torchrun`` or with a single process."""
    environ = os.environ if environ is None else environ
    try:
        world = int(environ.get("WORLD_SIZE", "1"))
        rank = int(environ.get("RANK", "0"))
        local = int(environ.get("LOCAL_RANK", str(rank)))
    except ValueError as err:
        raise ValueError(f"bad torchrun environment (RANK/WORLD_SIZE/LOCAL_RANK): {err}") from None
    if world <= 1:
        return None
    if not 0 <= rank < world:
        raise ValueError(f"RANK={rank} is outside 0..WORLD_SIZE-1={world - 1}")
    return DistEnv(rank, world, local)


def is_main_process() -> bool:
    """True outside ``torchrun`` and on rank 0."""
    env = env_from_environ()
    return env is None or env.is_main


def rank_device(device: str, env: DistEnv | None = None) -> str:
    """``"cuda"`` becomes this rank's GPU (``cuda:LOCAL_RANK``) under ``torchrun``."""
    env = env_from_environ() if env is None else env
    if env is not None and device == "cuda":
        return f"cuda:{env.local_rank % max(1, torch.cuda.device_count())}"
    return device


@contextmanager
def process_group(device: str | torch.device, env: DistEnv | None = None):
    """A process group for this ``torchrun`` job: NCCL when ``device`` is CUDA, gloo
    otherwise (reused when one is already initialised; destroyed on exit if created)."""
    env = env_from_environ() if env is None else env
    device = torch.device(device)
    created = False
    if env is not None and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend, rank=env.rank, world_size=env.world_size,
                                timeout=datetime.timedelta(hours=12))
        created = True
    try:
        yield env
    finally:
        if created:
            dist.destroy_process_group()


# ----------------------------------------------------------------------------- extraction


def sharded_extraction(paths: Sequence[Any], out: str, env: DistEnv | None = None):
    """This rank's share of an extraction: ``(paths, out, report)``.

    Outside ``torchrun``: everything, ``out`` itself, and ``report(summary)`` returns
    ``summary.report()``. Under ``torchrun``: the rank's contiguous block of ``paths``,
    its shard file, and a report prefixed with the rank and the shard."""
    env = env_from_environ() if env is None else env
    if env is None:
        return list(paths), out, lambda summary: summary.report()
    lo, hi = split_range(len(paths), env.rank, env.world_size)
    shard = shard_path(out, env.rank, env.world_size)

    def report(summary) -> str:
        return f"rank {env.rank}/{env.world_size} ({shard}): " + summary.report()

    return list(paths)[lo:hi], shard, report


# ----------------------------------------------------------------------------- codebook


def broadcast_tensor(tensor: torch.Tensor | None, device: str | torch.device, src: int = 0) -> torch.Tensor:
    """Send a float32 2-D tensor from ``src`` to every rank (its shape first)."""
    device = torch.device(device)
    shape = torch.zeros(2, dtype=torch.int64, device=device)
    if dist.get_rank() == src:
        shape = torch.tensor(tensor.shape, dtype=torch.int64, device=device)
    dist.broadcast(shape, src)
    out = tensor.to(device=device, dtype=torch.float32).contiguous() if dist.get_rank() == src else \
        torch.empty(tuple(shape.tolist()), dtype=torch.float32, device=device)
    dist.broadcast(out, src)
    return out


def build_index(
    features: str,
    out: str,
    *,
    parts: int = 1,
    codebook: np.ndarray | None = None,
    codebook_size: int | None = None,
    train_features: str | None = None,
    seed: int = 0,
    device: str = "cpu",
    log=print,
    **params: Any,
) -> dict[str, Any]:
    """Build an index of a feature collection, sharded in ``parts`` (one process) or one
    part per rank (``torchrun``); the codebook is trained once, on rank 0, by
    :func:`lit.pipeline.train_codebook` (``codebook_size=None``: :func:`lit.pipeline.codebook_size`).

    With ``parts == 1`` outside ``torchrun`` it writes one index file ``out``; otherwise
    ``shard_path(out, r, parts)`` for every part. Descriptors are streamed into the index
    (bounded memory); codebook training holds the training descriptors, as a single
    process does. Returns a summary dict (on rank 0; ``{}`` on the others).
    """
    from . import pipeline  # the one codebook policy (size, restarts), as for a single index
    from .asmk import ASMK
    from .shards import FeatureCollection, build_part

    env = env_from_environ()
    with FeatureCollection(features) as coll:
        if len(coll) == 0:
            raise ValueError(f"{features}: no images in this feature collection")
        with process_group(device, env):
            main = env is None or env.is_main
            if codebook is None and main:
                if train_features:
                    with FeatureCollection(train_features) as tc:
                        train = tc.all_descriptors()[0]
                else:
                    train = coll.all_descriptors()[0]
                size = pipeline.codebook_size(len(train)) if codebook_size is None else min(codebook_size, len(train))
                warning = pipeline.small_set_warning(len(train), len(coll))
                if warning:
                    log(warning)
                log(f"training a codebook of {size} words on {len(train)} descriptors")
                codebook = pipeline.train_codebook(train, size, seed=seed, device=device)
                del train
            cb = None if codebook is None else torch.as_tensor(np.asarray(codebook) if not isinstance(codebook, torch.Tensor) else codebook)
            if env is not None:
                cb = broadcast_tensor(cb, device).to(device)
            if env is None:
                ranks = range(parts)
                world = parts
            else:
                ranks, world = [env.rank], env.world_size
            stats = []
            for r in ranks:
                if world == 1:
                    index = ASMK(cb, device=device, **params)
                    from .shards import add_collection

                    add_collection(index, coll)
                    index.save(out)
                else:
                    index = build_part(cb, coll, out, r, world, device=device, **params)
                stats.append(index.stats())
                del index
            if env is not None:
                gathered: list[Any] = [None] * env.world_size
                dist.all_gather_object(gathered, stats)
                stats = [s for g in gathered for s in g]
            if not main:
                return {}
            total = {"images": sum(s["images"] for s in stats), "vectors": sum(s["vectors"] for s in stats),
                     "bytes": sum(s["bytes"] for s in stats), "parts": world, "words": stats[0]["words"]}
            return {"names": coll.names, "descriptors": coll.num_features, "stats": total}


# ----------------------------------------------------------------------------- search


class RankPartIndex:
    """Part ``rank`` of a sharded index, searched by every rank of a ``torchrun`` job; the
    per-part top-k lists are gathered and merged, so every rank gets the full result."""

    def __init__(self, sharded: ShardedIndex, env: DistEnv) -> None:
        if len(sharded.files) != env.world_size:
            raise ValueError(f"{sharded.files[0]}...: a sharded index of {len(sharded.files)} parts needs "
                             f"--nproc_per_node {len(sharded.files)} (got {env.world_size} processes)")
        self.sharded, self.env = sharded, env
        sharded.keep, sharded.home = False, env.rank
        self.params = sharded.params
        self.n_images = sharded.n_images

    def search(self, qdescriptors, qimage_ids, topk: int | None = None, *, words=None):
        x, words = self.sharded.prepare(qdescriptors, words)
        mine = self.sharded.part_search(self.env.rank, x, qimage_ids, topk, words)
        with process_group(self.sharded.device, self.env):
            gathered: list[Any] = [None] * self.env.world_size
            dist.all_gather_object(gathered, (mine.ranks.cpu(), mine.scores.cpu()))
        from .asmk.index import SearchResult

        return merge_results([SearchResult(r, s) for r, s in gathered], topk)


def open_index(path: str, device: str = "cpu"):
    """An index for searching: one file (:class:`lit.asmk.ASMK`), a sharded index searched
    part by part (:class:`lit.shards.ShardedIndex`), or, under ``torchrun``, this rank's part
    of it (:class:`RankPartIndex`)."""
    from .shards import open_index as open_any

    env = env_from_environ()
    if env is None or os.path.isfile(path):
        return open_any(path, device=device)
    return RankPartIndex(ShardedIndex(find_shards(path), device=device, keep=False), env)
