"""Reading and writing checkpoints safely: official FIRe files and lit's own.

lit's weights files (this module owns their format):

- ``.safetensors`` (what lit ships and shares): the state dict as tensors, and in the
  header's metadata (strings) ``format`` = ``"lit"``, ``version``, ``config`` (JSON of
  :meth:`ModelConfig.to_dict`, the match rule included) and ``meta`` (JSON). Tensors only:
  nothing in the file is code.
- ``.pt`` (``torch.save``; what the trainer writes, with its optimizer state): a dict
  ``{"format": "lit", "version", "config", "state_dict", "meta"}``.

Versions: 1 had no match rule (it loads with FIRe's, cosine >= 0.9); 2 holds it in
``config["match"]`` and the background bank of the rule as the ``match_background`` tensor
of the state dict. Official FIRe files (SPEC section 2) load with FIRe's rule.

Nothing is ever fully unpickled: every ``.pt``/``.pth`` goes through
``torch.load(weights_only=True)`` with a small allow-list (``pathlib`` paths become
strings; numpy scalars and dtypes).
"""

from __future__ import annotations

import json
import os
import pathlib
import pickle
import re
import struct
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from .._fileio import atomic_path
from ..errors import CheckpointError
from .config import BackboneConfig, LITConfig, ModelConfig, RuntimeConfig

LIT_FORMAT = "lit"
#: 2: the match rule in the config and its background bank in the state dict
LIT_FORMAT_VERSION = 2
_READABLE_VERSIONS = (1, 2)

# official FIRe backbone: nn.Sequential of torchvision ResNet children
_FIRE_TO_TIMM = {"0": "conv1", "1": "bn1", "4": "layer1", "5": "layer2", "6": "layer3", "7": "layer4"}
_TIMM_TO_FIRE = {v: k for k, v in _FIRE_TO_TIMM.items()}
_BACKBONE_PREFIX = "backbone.net."


def _path_to_str(*parts: str) -> str:
    return str(pathlib.PurePath(*parts))


def _allow_list() -> list:
    allowed: list = []
    for name in ("PosixPath", "WindowsPath", "PurePosixPath", "PureWindowsPath", "Path", "PurePath"):
        allowed.append((_path_to_str, f"pathlib.{name}"))
        allowed.append((_path_to_str, f"pathlib._local.{name}"))
    allowed.append(np.dtype)
    try:  # numpy 2 names first, then numpy 1
        from numpy._core.multiarray import scalar  # type: ignore[attr-defined]

        allowed.append((scalar, "numpy._core.multiarray.scalar"))
        allowed.append((scalar, "numpy.core.multiarray.scalar"))
    except ImportError:  # pragma: no cover
        from numpy.core.multiarray import scalar  # type: ignore[no-redef]

        allowed.append(scalar)
    for dt in ("Float64DType", "Float32DType", "Int64DType", "Int32DType", "BoolDType"):
        if hasattr(np, "dtypes") and hasattr(np.dtypes, dt):
            allowed.append(getattr(np.dtypes, dt))
    return allowed


_TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # the first pickle of a pre-1.6 torch.save file


def _sniff(path: str) -> str:
    """``"zip"`` (torch.save), ``"safetensors"``, ``"pickle"`` (a pickle stream: legacy
    torch file or plain pickle), ``"text"`` or ``"other"``, from the first bytes."""
    with open(path, "rb") as f:
        head = f.read(4096)
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    if is_safetensors_header(head, os.path.getsize(path)):
        return "safetensors"
    if head[:1] == b"\x80":
        return "pickle"
    try:
        head.decode("utf-8")
        if b"\x00" not in head:
            return "text"
    except UnicodeDecodeError:
        pass
    return "other"


def _plain_pickle_kind(path: str) -> str | None:
    """For a pickle stream: ``None`` if it is a legacy torch file, else a description."""
    from .._pickle import UnsafePickleError, restricted_load

    try:
        first = restricted_load(path)
    except UnsafePickleError as err:
        found = re.findall(r"global '([^']+)'", str(err))
        return f"code:{found[0] if found else 'a Python object'}"
    except ValueError:
        return "a Python pickle that is not a PyTorch checkpoint"
    if first == _TORCH_LEGACY_MAGIC:
        return None
    return f"a plain Python pickle of a {type(first).__name__}, not a PyTorch checkpoint"


def _refused_code(path: str, names: list[str]) -> CheckpointError:
    what = ", ".join(names) if names else "a Python object"
    return CheckpointError(
        f"{path}: refused: loading this file would import {what}, which a file of weights never needs, "
        "so it may run code (lit loads only tensors, numbers and strings); use a checkpoint saved "
        "from a state_dict, such as one from `lit download` or `lit train`"
    )


def safe_load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load`` with ``weights_only=True`` and lit's allow-list.

    Nothing in the file is ever executed. The errors are one sentence each: what the file
    is, why it is refused and what to do; they never suggest lifting the safety.

    Raises:
        CheckpointError: missing file; a text file or another kind of file; a plain Python
            pickle (not written by ``torch.save``); or a file that asks for Python objects
            outside the allow-list (a pickle that could run code).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such checkpoint file")
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"{path}: empty file (0 bytes), not a checkpoint; download or save it again")
    kind = _sniff(path)
    if kind == "safetensors":
        raise CheckpointError(f"{path}: a safetensors file, not a torch.save checkpoint: read it with "
                              "lit.load_model / lit.models.model_from_checkpoint")
    if kind == "text":
        raise CheckpointError(
            f"{path}: a text file, not a PyTorch checkpoint; pass the .pt/.pth file written by torch.save "
            "(e.g. from `lit download` or `lit train`)"
        )
    if kind == "pickle":
        plain = _plain_pickle_kind(path)
        if plain is not None and plain.startswith("code:"):
            raise _refused_code(path, [plain[5:]])
        if plain is not None:
            raise CheckpointError(
                f"{path}: {plain}; lit reads checkpoints written by torch.save (a state_dict, or the "
                "official FIRe files), so save the weights with torch.save"
            )
    elif kind == "other":
        raise CheckpointError(
            f"{path}: not a PyTorch checkpoint (neither a torch.save zip archive nor a pickle); "
            "check the file, or download it again if it is truncated"
        )
    try:
        with torch.serialization.safe_globals(_allow_list()), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "Detected pickle protocol 4 ..."
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        msg = str(err)
        found = re.findall(r"GLOBAL ([\w.]+)|global '([\w.]+)'", msg)
        names = sorted({g for grp in found for g in grp if g})
        if names:
            raise _refused_code(path, names) from None
        raise CheckpointError(
            f"{path}: refused: its pickle uses instructions that lit's safe loader does not read; "
            "use a checkpoint saved from a state_dict with torch.save"
        ) from None
    except Exception as err:  # torch raises many types for corrupt files
        detail = (str(err).splitlines()[0] if str(err) else type(err).__name__).split(". ")[0][:160]
        raise CheckpointError(
            f"{path}: a damaged or truncated PyTorch checkpoint ({detail}); download or save it again"
        ) from None


def is_safetensors_header(head: bytes, size: int) -> bool:
    """Whether ``head`` (the first bytes of a file of ``size`` bytes) starts a safetensors
    file: an 8-byte little-endian header length (safetensors allows up to 100 MB), then a
    JSON object. A truncated file still counts (its reader then says so)."""
    if len(head) < 10 or size < 10:
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return 2 <= n <= 100_000_000 and head[8:9] == b"{"


def read_safetensors(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a safetensors file.

    Raises:
        CheckpointError: not a readable safetensors file.
    """
    from safetensors import SafetensorError, safe_open

    path = os.fspath(path)
    try:
        with safe_open(path, framework="pt", device=str(map_location)) as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no items()
    except (SafetensorError, OSError, ValueError) as err:
        detail = str(err).splitlines()[0][:160] if str(err) else type(err).__name__
        raise CheckpointError(f"{path}: a damaged or truncated safetensors file ({detail}); download or save it again") from None
    return tensors, meta


def write_safetensors(path: str | os.PathLike, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> None:
    """Write ``tensors`` (contiguous CPU copies) and string ``metadata``, replacing ``path`` atomically."""
    from safetensors.torch import save_file

    from .._fileio import atomic_path

    sd = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(sd, tmp, metadata=dict(metadata))


# ---------------------------------------------------------------------- key conversion
def convert_fire_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an official FIRe state dict (SPEC section 2) to lit's names.

    ``features.{0,1,4,5,6}.*`` become ``backbone.net.{conv1,bn1,layer1,layer2,layer3}.*``;
    ``lit.*`` and ``dim_reduction.*`` keep their names; classifier keys ``fc.*`` are dropped.
    A ``module.`` prefix (DataParallel) is stripped.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key.startswith("module."):
            key = key[len("module."):]
        if key.startswith("fc."):
            continue
        m = re.match(r"features\.(\d+)\.(.*)", key)
        if m:
            if m.group(1) not in _FIRE_TO_TIMM:
                raise CheckpointError(f"unexpected backbone key {key!r} in FIRe state dict")
            key = f"{_BACKBONE_PREFIX}{_FIRE_TO_TIMM[m.group(1)]}.{m.group(2)}"
        out[key] = value
    return out


def to_fire_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse of :func:`convert_fire_state_dict` (for a ResNet backbone)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key.startswith(_BACKBONE_PREFIX):
            layer, rest = key[len(_BACKBONE_PREFIX):].split(".", 1)
            if layer not in _TIMM_TO_FIRE:
                raise CheckpointError(f"backbone key {key!r} has no FIRe equivalent")
            key = f"features.{_TIMM_TO_FIRE[layer]}.{rest}"
        out[key] = value
    return out


def config_from_fire_params(net_params: Mapping[str, Any] | None) -> ModelConfig:
    """Build a :class:`ModelConfig` from an official checkpoint's ``net_params``."""
    p = dict(net_params or {})
    arch = p.get("architecture", "resnet50")
    skip = int(p.get("skip_layer", 1))
    if skip not in (0, 1, 2):
        raise CheckpointError(f"unsupported skip_layer {skip} in net_params")
    lit = dict(p.get("lit", {}))
    lit_cfg = LITConfig(T=int(lit.get("T", 6)), N=int(lit.get("N", 256)), dim=int(lit.get("dim", 1024)))
    red = p.get("dim_reduction") or {}
    red_dim = int(red["dim"]) if isinstance(red, Mapping) and red.get("dim") else None
    rt = dict(p.get("runtime", {}))
    kwargs: dict[str, Any] = {}
    if "mean_std" in rt:
        mean, std = rt["mean_std"]
        kwargs["mean"], kwargs["std"] = tuple(map(float, mean)), tuple(map(float, std))
    for key in ("image_size", "features_num"):
        if key in rt:
            kwargs[key] = int(rt[key])
    for key in ("scales", "training_scales"):
        if key in rt:
            kwargs[key] = tuple(float(s) for s in rt[key])
    return ModelConfig(
        backbone=BackboneConfig(name=str(arch), out_index=4 - skip),
        lit=lit_cfg,
        reduction_dim=red_dim,
        runtime=RuntimeConfig(**kwargs),
    )


def fire_params_from_config(cfg: ModelConfig) -> dict[str, Any]:
    """Inverse of :func:`config_from_fire_params` (plain builtins)."""
    rt = cfg.runtime
    return {
        "architecture": cfg.backbone.name,
        "skip_layer": 4 - cfg.backbone.out_index,
        "dim_reduction": {"dim": cfg.reduction_dim} if cfg.reduction_dim else {},
        "lit": {"T": cfg.lit.T, "N": cfg.lit.N, "dim": cfg.lit.dim},
        "runtime": {
            "mean_std": [list(rt.mean), list(rt.std)],
            "image_size": rt.image_size,
            "features_num": rt.features_num,
            "scales": list(rt.scales),
            "training_scales": list(rt.training_scales),
        },
    }


# ---------------------------------------------------------------------- fitting
def load_state_dict_checked(model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Strictly load ``state_dict``; on mismatch raise one error listing every problem.

    Raises:
        CheckpointError: with the missing keys, unexpected keys and shape mismatches.
    """
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    shapes = sorted(
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
        for k in set(own) & set(state_dict)
        if tuple(own[k].shape) != tuple(state_dict[k].shape)
    )
    if missing or unexpected or shapes:
        lines = [f"{source} does not fit the model:"]
        if missing:
            lines.append(f"  missing keys ({len(missing)}): {_abbrev(missing)}")
        if unexpected:
            lines.append(f"  unexpected keys ({len(unexpected)}): {_abbrev(unexpected)}")
        if shapes:
            lines.append(f"  shape mismatches ({len(shapes)}): {_abbrev(shapes)}")
        raise CheckpointError("\n".join(lines))
    model.load_state_dict(state_dict, strict=True)


def _abbrev(items: list[str], n: int = 12) -> str:
    return ", ".join(items[:n]) + (f", ... (+{len(items) - n} more)" if len(items) > n else "")


# ---------------------------------------------------------------------- lit checkpoints
def save_checkpoint(model: torch.nn.Module, path: str | os.PathLike, meta: Mapping[str, Any] | None = None, half: bool = False) -> None:
    """Write a lit checkpoint (format version :data:`LIT_FORMAT_VERSION`): config (with the
    match rule), state dict (with the rule's background bank) and ``meta``.

    A path ending in ``.safetensors`` gives a safetensors file (config and meta as JSON in
    its metadata; what lit ships); any other a ``torch.save`` dict
    ``{"format", "version", "config", "state_dict", "meta"}``.

    Args:
        meta: free-form JSON-able information (default: ``model.meta``, the loaded
            checkpoint's).
        half: store floating tensors as float16 (weights for shipping); loading casts back.
    """
    sd = {k: (v.detach().half() if half and v.is_floating_point() else v.detach()).cpu().contiguous() for k, v in model.state_dict().items()}
    meta = dict(getattr(model, "meta", {}) if meta is None else meta)
    if os.fspath(path).endswith(".safetensors"):
        write_safetensors(path, sd, {"format": LIT_FORMAT, "version": str(LIT_FORMAT_VERSION),
                                     "config": json.dumps(model.cfg.to_dict()), "meta": json.dumps(meta)})
        return
    with atomic_path(path) as tmp:
        torch.save({"format": LIT_FORMAT, "version": LIT_FORMAT_VERSION, "config": model.cfg.to_dict(), "state_dict": sd,
                    "meta": meta}, tmp)


def save_fire_checkpoint(model: torch.nn.Module, path: str | os.PathLike, epoch: int = 0) -> None:
    """Write ``model`` in the official FIRe layout (SPEC section 2), e.g. for tests."""
    torch.save(
        {
            "state_dict": to_fire_state_dict(model.state_dict()),
            "net_params": fire_params_from_config(model.cfg),
            "meta": {},
            "epoch": epoch,
            "_version": "fire/2021",
        },
        os.fspath(path),  # a test fixture in the official layout (not a file lit writes for users)
    )


def _lit_parts(path: str, ckpt: Mapping[str, Any]) -> tuple[ModelConfig, dict[str, torch.Tensor], dict[str, Any]]:
    """Config, float32 state dict and meta of a lit checkpoint (any readable version)."""
    version = ckpt.get("version")
    if version not in _READABLE_VERSIONS:
        raise CheckpointError(f"{path}: lit checkpoint version {version!r}, this lit reads versions "
                              f"{', '.join(map(str, _READABLE_VERSIONS))}: update lit to read it")
    try:
        cfg = ModelConfig.from_dict(ckpt["config"])
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: bad model config ({err})") from None
    state = {k: v.float() if v.is_floating_point() else v for k, v in ckpt["state_dict"].items()}
    meta = ckpt.get("meta") or {}
    return cfg, state, dict(meta) if isinstance(meta, Mapping) else {}


def read_checkpoint(path: str | os.PathLike) -> tuple[ModelConfig, dict[str, torch.Tensor], dict[str, Any]]:
    """``(config, state_dict, meta)`` of an official FIRe checkpoint or a lit checkpoint
    (``.safetensors`` or ``.pt``, any readable version), with lit's key names and float32
    tensors; meta is ``{}`` for FIRe files.

    Raises:
        CheckpointError: unreadable, unsafe, or of another kind (see :func:`safe_load`).
    """
    path = os.fspath(path)
    if os.path.isfile(path) and _sniff(path) == "safetensors":
        tensors, raw = read_safetensors(path)
        if raw.get("format") != LIT_FORMAT:
            raise CheckpointError(f"{path}: a safetensors file without lit's metadata (format {raw.get('format')!r}): "
                                  "not a lit checkpoint")
        try:
            ckpt = {"version": int(raw.get("version", "0")), "config": json.loads(raw["config"]),
                    "meta": json.loads(raw.get("meta", "{}")), "state_dict": tensors}
        except (KeyError, ValueError) as err:
            raise CheckpointError(f"{path}: bad lit metadata in the safetensors header ({err})") from None
        return _lit_parts(path, ckpt)
    ckpt = safe_load(path)
    if not isinstance(ckpt, Mapping):
        raise CheckpointError(f"{path}: expected a dict checkpoint, got {type(ckpt).__name__}")
    if ckpt.get("format") == LIT_FORMAT:
        return _lit_parts(path, ckpt)
    if "state_dict" in ckpt and ("net_params" in ckpt or any(k.startswith("features.") for k in ckpt["state_dict"])):
        cfg = config_from_fire_params(ckpt.get("net_params"))  # FIRe's match rule: the default
        state = convert_fire_state_dict(ckpt["state_dict"])
        if cfg.reduction_dim is None and "dim_reduction.weight" in state:
            cfg = ModelConfig(cfg.backbone, cfg.lit, int(state["dim_reduction.weight"].shape[0]), cfg.runtime)
        if cfg.reduction_dim is not None and "dim_reduction.weight" not in state:
            cfg = ModelConfig(cfg.backbone, cfg.lit, None, cfg.runtime)
        return cfg, state, {}
    raise CheckpointError(
        f"{path}: neither a lit checkpoint nor an official FIRe checkpoint "
        f"(top-level keys: {sorted(map(str, ckpt))[:10]})"
    )


def model_from_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu"):
    """Build a model from an official FIRe checkpoint or a lit checkpoint (``.safetensors``
    or ``.pt``), with its match rule (FIRe's cosine >= 0.9 for FIRe files and lit files of
    version 1)."""
    from .model import SuperFeatureModel

    path = os.fspath(path)
    cfg, state, meta = read_checkpoint(path)
    model = SuperFeatureModel(cfg)
    load_state_dict_checked(model, state, source=path)
    model.meta = meta
    if model.dim_reduction is None:
        warnings.warn(
            f"{path} has no dimensionality reduction layer (like fire_imagenet.pth): "
            "call model.init_reduction(features) before extract()",
            stacklevel=2,
        )
    else:
        model.dim_reduction.requires_grad_(False)
    return model.to(device).eval()
