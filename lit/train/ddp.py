"""Multi-process training helpers (``torchrun``, one process per GPU, or gloo on CPU).

The trainer does not wrap the model in ``DistributedDataParallel``: every process runs
the same model, processes a disjoint share of the tuples of each optimiser step, and the
summed gradients are all-reduced before the step (:meth:`DistContext.all_reduce_gradients`).
Because each tuple's loss is divided by the *total* number of tuples per step, the reduced
gradient equals the single-process accumulated gradient, so ``n`` processes give the same
parameters as one process up to the order of floating-point additions (measured: 3e-6 after
two Adam steps at lr 1e-3 on a tiny model; Adam's first steps divide each gradient by its
own magnitude, which magnifies rounding in near-zero gradients).

Mining, whitening and validation descriptors are shared among the processes too (every
process embeds every ``world_size``-th image, then rows are all-gathered), one image at a
time so that a row does not depend on how the work is shared. Checkpoints and metrics are
written by rank 0; with several nodes the output folder must be on a shared file system,
and every node must see the training images under the same paths.

Launch: ``torchrun --nproc_per_node G [--nnodes M --node_rank R --master_addr A
--master_port P] -m lit.train --config FILE --out DIR``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist
from torch import Tensor, nn


@dataclass(frozen=True)
class DistContext:
    """Rank and world size of this process (``world_size == 1``: not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, device: str = "cpu") -> DistContext:
        """Join the process group described by ``torchrun``'s environment, if any.

        Reads ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` (and ``MASTER_ADDR``/``MASTER_PORT``);
        the backend is NCCL for CUDA devices and gloo otherwise. Without ``WORLD_SIZE > 1``
        returns a single-process context.
        """
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
        if not torch_dist.is_initialized():
            backend = "nccl" if str(device).startswith("cuda") else "gloo"
            torch_dist.init_process_group(backend=backend, rank=rank, world_size=world)
        return cls(rank=rank, world_size=world, local_rank=local)

    @classmethod
    def from_group(cls) -> DistContext:
        """Context of an already initialised default process group."""
        if not torch_dist.is_available() or not torch_dist.is_initialized():
            return cls()
        rank = torch_dist.get_rank()
        return cls(rank, torch_dist.get_world_size(), int(os.environ.get("LOCAL_RANK", rank)))

    # ------------------------------------------------------------------ collectives
    def barrier(self) -> None:
        if self.enabled:
            torch_dist.barrier()

    def all_reduce_sum(self, tensor: Tensor) -> Tensor:
        """In-place sum over processes (returns the tensor)."""
        if self.enabled:
            torch_dist.all_reduce(tensor, op=torch_dist.ReduceOp.SUM)
        return tensor

    def all_reduce_gradients(self, parameters: Iterable[nn.Parameter]) -> None:
        """Sum the gradients of ``parameters`` over processes, in one flat buffer.

        Parameters without a gradient on this process count as zero (so that all
        processes take part in the same collective).
        """
        if not self.enabled:
            return
        params = [p for p in parameters if p.requires_grad]
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        flat = torch.cat([p.grad.reshape(-1) for p in params])
        torch_dist.all_reduce(flat, op=torch_dist.ReduceOp.SUM)
        offset = 0
        for p in params:
            n = p.grad.numel()
            p.grad.copy_(flat[offset:offset + n].view_as(p.grad))
            offset += n

    def broadcast_module(self, module: nn.Module, src: int = 0) -> None:
        """Copy every parameter and buffer of ``module`` from process ``src``."""
        if not self.enabled:
            return
        with torch.no_grad():
            for t in list(module.parameters()) + list(module.buffers()):
                torch_dist.broadcast(t.data, src=src)

    def all_gather_rows(self, local: Tensor) -> list[Tensor]:
        """Every process's ``local`` rows (row counts may differ), in rank order."""
        if not self.enabled:
            return [local]
        n = torch.tensor([local.shape[0]], device=local.device, dtype=torch.long)
        counts = [torch.zeros_like(n) for _ in range(self.world_size)]
        torch_dist.all_gather(counts, n)
        counts = [int(c) for c in counts]
        m = max(counts)
        padded = torch.zeros((m, *local.shape[1:]), device=local.device, dtype=local.dtype)
        padded[: local.shape[0]] = local
        parts = [torch.empty_like(padded) for _ in range(self.world_size)]
        torch_dist.all_gather(parts, padded)
        return [p[:c] for p, c in zip(parts, counts, strict=True)]

    def broadcast_object(self, obj, src: int = 0):
        """``obj`` of process ``src`` on every process (pickled: only trusted, local data)."""
        if not self.enabled:
            return obj
        box = [obj]
        torch_dist.broadcast_object_list(box, src=src)
        return box[0]


def shard(indices: Iterable[int], ctx: DistContext) -> list[int]:
    """The share of ``indices`` this process handles: every ``world_size``-th, from ``rank``."""
    return list(indices)[ctx.rank::ctx.world_size]
