"""Process groups, collectives and each process's share of the work, for ``torchrun``.

``torchrun`` sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` (also across nodes with
``--nnodes`` and a rendezvous endpoint); lit's commands run the same way on one process or
many, and split the work by rank (the policies live in :mod:`lit.pipeline`):

- rank ``r`` of ``N`` takes the ``r``-th contiguous block of a list (:func:`split_range`) and
  writes its own file ``NAME.RRRRR-of-NNNNN.h5`` (:func:`shard_path`); :func:`find_shards`
  finds such a set again (by its base name, a folder or a glob), in rank order;
- :func:`process_group` opens a gloo (CPU) or NCCL (GPU) group when one is needed;
  :func:`broadcast_tensor` and ``torch.distributed``'s own collectives move data.

All ranks must see the same files (a shared file system across nodes).
"""

from __future__ import annotations

import datetime
import glob
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .errors import NotFoundError, UsageError

__all__ = [
    "DistEnv", "broadcast_tensor", "env_from_environ", "find_shards", "is_main_process", "process_group",
    "shard_path", "split_range",
]

_SHARD_RE = re.compile(r"^(?P<stem>.*)\.(?P<rank>\d{5})-of-(?P<world>\d{5})(?P<ext>\.[^.]+)$")


def shard_path(path: str | os.PathLike, rank: int, world_size: int) -> str:
    """Name of shard ``rank`` of ``world_size``: ``feats.h5`` -> ``feats.00001-of-00004.h5``."""
    path = os.fspath(path)
    stem, ext = os.path.splitext(path)
    return f"{stem}.{rank:05d}-of-{world_size:05d}{ext or '.h5'}"


def split_range(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """Contiguous block ``[lo, hi)`` of ``n`` items for ``rank``; sizes differ by at most 1."""
    if not 0 <= rank < world_size:
        raise UsageError(f"rank must be in 0..{world_size - 1}, got {rank}")
    base, extra = divmod(n, world_size)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (1 if rank < extra else 0)


def find_shards(path: str | os.PathLike) -> list[str]:
    """Files of a collection: an existing file, a folder of ``.h5`` files, a glob, or the base
    name of a shard set (``feats.h5`` when only ``feats.*-of-*.h5`` exist).

    Shards named ``*.RRRRR-of-WWWWW.h5`` are ordered by rank and must be complete (every
    rank of one world size); other files are ordered by name.

    Raises:
        FileNotFoundError: nothing matches.
        ValueError: an incomplete or mixed shard set.
    """
    path = os.fspath(path)
    if os.path.isfile(path):
        return [path]
    if os.path.isdir(path):
        files = sorted(glob.glob(os.path.join(glob.escape(path), "*.h5")))
        what = f"{path}: no .h5 files in this folder"
    elif any(c in path for c in "*?["):
        files = sorted(p for p in glob.glob(path) if os.path.isfile(p))
        what = f"{path}: no file matches this pattern"
    else:
        stem, ext = os.path.splitext(path)
        files = sorted(glob.glob(f"{glob.escape(stem)}.[0-9]*-of-[0-9]*{ext or '.h5'}"))
        what = f"{path}: no such file, and no shards {os.path.basename(shard_path(path, 0, 2)).replace('00000-of-00002', 'RRRRR-of-WWWWW')}"
    if not files:
        raise NotFoundError(what)
    matches = [_SHARD_RE.match(os.path.basename(f)) for f in files]
    if all(matches):
        keys = {(m["stem"], m["ext"], int(m["world"])) for m in matches}
        if len(keys) > 1:
            raise UsageError(f"{path}: files of several shard sets ({', '.join(sorted({k[0] + k[1] for k in keys}))} "
                             f"or several world sizes): name one set")
        world = next(iter(keys))[2]
        ranks = sorted(int(m["rank"]) for m in matches)
        if ranks != list(range(world)):
            missing = sorted(set(range(world)) - set(ranks))
            raise UsageError(f"{path}: incomplete shard set of {world}: missing rank(s) {missing}")
        files = [f for _, f in sorted((int(m["rank"]), f) for m, f in zip(matches, files, strict=True))]
    return files



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
        raise UsageError(f"bad torchrun environment (RANK/WORLD_SIZE/LOCAL_RANK): {err}") from None
    if world <= 1:
        return None
    if not 0 <= rank < world:
        raise UsageError(f"RANK={rank} is outside 0..WORLD_SIZE-1={world - 1}")
    return DistEnv(rank, world, local)


def is_main_process() -> bool:
    """True outside ``torchrun`` and on rank 0."""
    env = env_from_environ()
    return env is None or env.is_main


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


# ----------------------------------------------------------------------------- collectives


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
