"""One device resolver for the whole package.

``resolve_device("auto")`` is CUDA when available, else the CPU; under ``torchrun`` a bare
``"cuda"`` (or ``"auto"`` on a GPU machine) becomes this process's own GPU
(``cuda:LOCAL_RANK``). Names are checked against the machine: asking for CUDA where there
is none, or for ``cuda:3`` on a machine with two GPUs, is a :class:`lit.errors.UsageError`
that says so.
"""

from __future__ import annotations

import os

import torch

from .errors import UsageError

__all__ = ["resolve_device"]


def _local_rank() -> int | None:
    """``LOCAL_RANK`` of a ``torchrun`` job of several processes, else ``None``."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        return int(os.environ["LOCAL_RANK"]) if world > 1 and "LOCAL_RANK" in os.environ else None
    except ValueError:
        return None


def resolve_device(device: str | torch.device | None = "auto", *, local_rank: int | None = None) -> torch.device:
    """The :class:`torch.device` for a user's device name.

    Args:
        device: ``"auto"`` (or ``None``), ``"cpu"``, ``"cuda"``, ``"cuda:N"``, a
            :class:`torch.device`, or another torch device type (``"meta"``, ``"mps"``...),
            which is passed through.
        local_rank: the GPU of this process for a bare ``"cuda"``; default ``LOCAL_RANK``
            under ``torchrun``.

    Raises:
        UsageError: CUDA asked for where there is none, or a GPU index beyond the machine's.
    """
    if isinstance(device, torch.device):
        name = str(device)
    elif device is None:
        name = "auto"
    elif isinstance(device, str):
        name = device.strip().lower()
    else:
        raise TypeError(f"device must be a str or torch.device, got {type(device).__name__}")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if not name.startswith("cuda"):
        try:
            return torch.device(name)
        except RuntimeError:
            raise UsageError(f"device must be auto, cpu or cuda[:N], got {device!r}") from None
    if not (name == "cuda" or (name.startswith("cuda:") and name[5:].isdigit())):
        raise UsageError(f"device must be auto, cpu or cuda[:N], got {device!r}")
    if not torch.cuda.is_available():
        raise UsageError(f"device {name}: CUDA is not available on this machine")
    count = torch.cuda.device_count()
    if name == "cuda":
        rank = _local_rank() if local_rank is None else local_rank
        return torch.device("cuda", rank % count) if rank is not None else torch.device("cuda")
    if int(name[5:]) >= count:
        raise UsageError(f"device {name}: this machine has {count} CUDA device{'' if count == 1 else 's'} "
                         f"(cuda:0..cuda:{count - 1})")
    return torch.device(name)
