"""A fake accelerator for CPU tests: catches device mix-ups without a GPU.

``with fake_device() as dev:`` makes ``dev`` (``torch.device("meta")``) behave like an
accelerator whose tensors really hold data: a tensor moved there (``.to(dev)``,
``module.to(dev)``, ``torch.zeros(..., device=dev)``, ``x.new_*``, ``*_like``) is a CPU
tensor of the subclass :class:`FakeDeviceTensor` that reports ``device == dev``, and every
result computed from it is one too. A :class:`~torch.overrides.TorchFunctionMode` checks
every torch call on the way and raises :class:`DeviceMixup` where CUDA would fail:

- an op that takes both a tensor on the device and a host tensor with at least one
  dimension (0-dim host scalars are allowed, as on CUDA; index tensors of ``t[idx]`` and
  the source of ``copy_`` may live anywhere, as on CUDA): this catches tensors created
  without ``device=`` (they land on the host) and meeting device data, and results not
  moved back to the device;
- ``.numpy()`` / ``np.asarray(t)`` / ``np.array(t)`` of a tensor on the device (CUDA:
  "can't convert cuda tensor to numpy"): results must cross to numpy through ``.cpu()``.

``.cpu()`` / ``.to("cpu")`` of a device tensor returns a plain CPU copy, as a real
transfer does. ``.item()``, ``.tolist()``, ``float(t)``, ``bool(t)`` and printing are
legal (they synchronise on CUDA); :attr:`FakeDevice.syncs` counts them, so a test can
also bound the host syncs of a training step. ``torch.autocast(device_type="meta")`` runs
CPU autocast, so the bf16 paths run too.

What it cannot catch: anything CUDA-specific at run time, because nothing runs on a GPU —
kernel and cuBLAS/cuDNN numerics (TF32, bf16 rounding), ``torch.cuda`` API calls (RNG
states, streams, ``synchronize``, memory stats), ``pin_memory``, NCCL, ``torch.compile``,
asynchronous-copy races and out-of-memory; code that branches on
``device.type == "cuda"`` takes its non-CUDA branch here (the ``device.type != "cpu"``
branches do run). Those are for ``benchmarks/device_check.py`` on a real GPU. Tensors
pickled by ``torch.save`` keep the subclass, so ``weights_only`` loads of state saved under
the harness fail: move state to the CPU first (as lit's checkpoints do).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

FAKE = torch.device("meta")


class DeviceMixup(RuntimeError):
    """A device mix-up that would fail (or silently copy) on a real accelerator."""


class FakeDeviceTensor(torch.Tensor):
    """A CPU tensor that says it lives on :data:`FAKE` (results of its ops are too)."""

    @property
    def device(self) -> torch.device:  # noqa: D401
        return FAKE

    @property
    def is_cpu(self) -> bool:
        return False


def _is_fake(t) -> bool:
    return isinstance(t, FakeDeviceTensor)


def _is_host(t) -> bool:
    return isinstance(t, torch.Tensor) and not isinstance(t, FakeDeviceTensor) and t.device.type == "cpu"


def _as_device(value) -> torch.device | None:
    if isinstance(value, torch.device):
        return value
    if isinstance(value, str):
        try:
            return torch.device(value)
        except RuntimeError:
            return None
    if isinstance(value, int) and not isinstance(value, bool):
        return torch.device("cuda", value)
    return None


def _to_target(args, kwargs) -> torch.device | None:
    """The device argument of ``Tensor.to(...)`` (or None when only dtype/format change)."""
    if "device" in kwargs and kwargs["device"] is not None:
        return _as_device(kwargs["device"])
    for a in args[1:]:
        if isinstance(a, torch.Tensor):
            return a.device
        d = _as_device(a) if not isinstance(a, torch.dtype) else None
        if d is not None:
            return d
    return None


_NUMPY = {torch.Tensor.numpy, torch.Tensor.__array__}
_SYNCS = {torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.__float__, torch.Tensor.__int__,
          torch.Tensor.__bool__, torch.Tensor.__index__}
_ANY_SOURCE = {torch.Tensor.copy_, torch.Tensor.__getitem__}
_GRAD = torch.Tensor.grad  # its __get__ is what the mode sees for `t.grad`
_UNCHECKED = {torch._has_compatible_shallow_copy_type}


@dataclass
class FakeDevice:
    """State of one :func:`fake_device` block: the device and the host syncs counted."""

    device: torch.device = FAKE
    syncs: int = 0
    sync_ops: list[str] = field(default_factory=list)


class _Mode(TorchFunctionMode):
    def __init__(self, state: FakeDevice) -> None:
        super().__init__()
        self.state = state

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", str(func))
        if func in _NUMPY:
            if _is_fake(args[0]):
                raise DeviceMixup(f"{name}() of a tensor on the device {tuple(args[0].shape)}: call .cpu() first")
            return func(*args, **kwargs)
        if func in _SYNCS and _is_fake(args[0]):
            self.state.syncs += 1
            self.state.sync_ops.append(name)
            return func(args[0].as_subclass(torch.Tensor), *args[1:], **kwargs)
        if getattr(func, "__self__", None) is _GRAD:  # autograd's gradients of device tensors live on the device
            out = func(*args, **kwargs)
            return out.as_subclass(FakeDeviceTensor) if _is_fake(args[0]) and isinstance(out, torch.Tensor) else out
        if func is torch.Tensor.cpu:
            return args[0].as_subclass(torch.Tensor).clone() if _is_fake(args[0]) else func(*args, **kwargs)
        if func is torch.Tensor.to:
            target = _to_target(args, kwargs)
            src = args[0]
            rest, kw = _on_cpu(args[1:], kwargs)
            if target is not None and target.type == FAKE.type:
                plain = src.as_subclass(torch.Tensor)
                out = plain.to(*rest, **kw)
                if not _is_fake(src) and out.data_ptr() == plain.data_ptr():
                    out = out.clone()  # a real transfer copies
                return out.as_subclass(FakeDeviceTensor)
            if target is not None and target.type == "cpu" and _is_fake(src):
                out = src.as_subclass(torch.Tensor).to(*rest, **kw)
                return out.clone() if out.data_ptr() == src.data_ptr() else out
            if target is not None and target.type not in ("cpu", FAKE.type):
                raise DeviceMixup(f"Tensor.to({target}) under the fake device: use the test's device {FAKE}")
            return func(*args, **kwargs)
        dev = _as_device(kwargs.get("device")) if "device" in kwargs else None
        if dev is not None and dev.type == FAKE.type:
            out = func(*args, **{**kwargs, "device": "cpu"})
            return _wrap(out)
        if dev is not None and dev.type == "cuda":
            raise DeviceMixup(f"{name}(device={dev}) under the fake device: use the test's device {FAKE}")
        flat, _ = tree_flatten((args, kwargs))
        tensors = [t for t in flat if isinstance(t, torch.Tensor)]
        if func not in _UNCHECKED and any(_is_fake(t) for t in tensors):
            checked = tensors
            if func in _ANY_SOURCE:
                checked = [args[0]]
            elif func is torch.Tensor.__setitem__:
                checked = [args[0], *[t for t in tree_flatten(args[2:])[0] if isinstance(t, torch.Tensor)]]
            host = [t for t in checked if _is_host(t) and t.dim() > 0]
            if host and any(_is_fake(t) for t in checked):
                shapes = ", ".join(str(tuple(t.shape)) for t in host)
                raise DeviceMixup(f"{name}: mixes tensors on the device with host tensors of shape {shapes}")
        return func(*args, **kwargs)


def _on_cpu(args, kwargs):
    """``Tensor.to`` arguments with the device replaced by the CPU."""
    rest, kw = [], dict(kwargs)
    if kw.get("device") is not None:
        kw["device"] = "cpu"
    for a in args:
        if isinstance(a, torch.Tensor):
            rest.append(a.dtype)
        elif not isinstance(a, (torch.dtype, bool)) and a is not None and _as_device(a) is not None:
            rest.append(torch.device("cpu"))
        else:
            rest.append(a)
    return rest, kw


def _wrap(out):
    if isinstance(out, torch.Tensor) and not _is_fake(out):
        return out.as_subclass(FakeDeviceTensor)
    if isinstance(out, (tuple, list)):
        return type(out)(_wrap(o) for o in out)
    return out


@contextlib.contextmanager
def fake_device() -> Iterator[FakeDevice]:
    """Run a block with the fake accelerator (see the module docstring).

    Yields:
        :class:`FakeDevice`; use ``state.device`` wherever lit takes a ``device``.
    """
    state = FakeDevice()
    before = torch.__future__.get_overwrite_module_params_on_conversion()
    torch.__future__.set_overwrite_module_params_on_conversion(True)  # parameters become device tensors
    real_autocast = torch.autocast
    torch.autocast = _autocast_on(real_autocast)  # autocast(device_type="meta") runs CPU autocast
    try:
        with _Mode(state):
            yield state
    finally:
        torch.autocast = real_autocast
        torch.__future__.set_overwrite_module_params_on_conversion(before)


def _autocast_on(real):
    class autocast(real):  # noqa: N801  (stands in for torch.autocast)
        def __init__(self, device_type, *args, **kwargs):
            super().__init__("cpu" if device_type == FAKE.type else device_type, *args, **kwargs)

    return autocast


def on_device(t) -> bool:
    """Whether ``t`` is a tensor on the fake device."""
    return _is_fake(t)
