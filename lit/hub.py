"""Registry of named pretrained models: name -> URL, full sha256, config.

Files are cached in ``$LIT_CACHE`` (else ``<torch hub dir>/lit``) and their sha256 is
checked on download and on every load.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"


@dataclass(frozen=True)
class PretrainedCfg:
    """One registered model.

    Args:
        name: registry name.
        url: where to download the checkpoint from (``http(s)://`` or ``file://``).
        filename: name of the file in the cache.
        sha256: full sha256 of the file; ``None`` only for third-party files whose hash was
            never published — then the hash seen at first download is recorded next to the
            file and checked on every later load (trust on first use, with a warning).
        local: path of a copy shipped in this repository's ``weights/`` (used first).
        description: one line for ``lit models``.
        license: licence of the weights.
        tags: free-form labels.
        match_threshold: the model's cosine threshold for a super-feature match (``lit match``,
            ``model.match``): FIRe's 0.9 for FIRe's descriptors; a model trained by lit has
            its own, calibrated on its training photos (see its model card); ``None``: no
            cosine floor (the background test decides).
        match_background: file (in ``weights/``) of the model's background super-features
            for the background test of its match rule (:func:`lit.matching.match_superfeatures`),
            an ``.npz`` with ``descriptors`` (M x D); ``None``: no background test.
        match_background_sha256: full sha256 of that file (checked on load).
        match_margin: the background test's margin (calibrated with the background).
    """

    name: str
    url: str
    filename: str
    sha256: str | None = None
    local: str | None = None
    description: str = ""
    license: str = ""
    tags: tuple[str, ...] = field(default_factory=tuple)
    match_threshold: float | None = 0.9
    match_background: str | None = None
    match_background_sha256: str | None = None
    match_margin: float | None = None


_FIRE_URL = "http://download.europe.naverlabs.com/ComputerVision/FIRe"

REGISTRY: dict[str, PretrainedCfg] = {}


def register(cfg: PretrainedCfg) -> PretrainedCfg:
    """Add a model to the registry (a name can only be registered once)."""
    if cfg.name in REGISTRY:
        raise ValueError(f"model {cfg.name!r} is already registered")
    REGISTRY[cfg.name] = cfg
    return cfg


register(PretrainedCfg(
    name="fire",
    url=f"{_FIRE_URL}/official/fire.pth",
    filename="fire.pth",
    description="Official FIRe model (ResNet-50 + LIT, SfM-120k), ROxford M/H 82.6/62.2 with ASMK",
    license="CC BY-NC-SA 4.0 (NAVER LABS)",
))
register(PretrainedCfg(
    name="fire-imagenet",
    url=f"{_FIRE_URL}/pretraining/fire_imagenet.pth",
    filename="fire_imagenet.pth",
    description="FIRe ImageNet pre-training (backbone + LIT, no reduction layer)",
    license="CC BY-NC-SA 4.0 (NAVER LABS)",
))

def register_from_json(path: str | os.PathLike) -> list[str]:
    """Register every entry of a JSON list of :class:`PretrainedCfg` fields; returns the names."""
    try:
        entries = json.loads(Path(path).read_text())
        names = []
        for entry in entries:
            entry = dict(entry)
            entry["tags"] = tuple(entry.get("tags", ()))
            names.append(register(PretrainedCfg(**entry)).name)
        return names
    except (OSError, json.JSONDecodeError, TypeError) as err:
        raise ValueError(f"{path}: not a valid model registry file ({err})") from None


# models trained by this project, shipped in weights/
if (WEIGHTS_DIR / "registry.json").is_file():
    register_from_json(WEIGHTS_DIR / "registry.json")
# a user's own registry (e.g. models on a lab server): LIT_REGISTRY=/path/to/models.json
if os.environ.get("LIT_REGISTRY"):
    register_from_json(os.environ["LIT_REGISTRY"])


def list_models() -> list[str]:
    """Registered model names."""
    return sorted(REGISTRY)


def get_pretrained_cfg(name: str) -> PretrainedCfg:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown model name {name!r}; registered: {', '.join(list_models())}") from None


def _check_recorded_hash(path: Path, cfg: PretrainedCfg) -> None:
    from ._download import file_sha256

    actual = file_sha256(path)
    if cfg.sha256 is not None:
        if actual != cfg.sha256:
            raise ValueError(f"{path}: sha256 {actual} does not match the registry's {cfg.sha256} for {cfg.name!r}; delete the file to download it again")
        return
    record = path.with_suffix(path.suffix + ".sha256")
    if record.is_file():
        expected = record.read_text().split()[0]
        if actual != expected:
            raise ValueError(f"{path}: sha256 {actual} differs from the one recorded at first download ({expected})")
    else:
        record.write_text(f"{actual}  {path.name}\n")
        warnings.warn(
            f"no published sha256 for {cfg.name!r}: recorded {actual} in {record}; later loads are checked against it",
            stacklevel=3,
        )


def resolve(name: str, progress: bool = True) -> Path:
    """Local path of a registered model's checkpoint, downloading it once if needed."""
    from ._download import cache_dir, download_url

    cfg = get_pretrained_cfg(name)
    if cfg.local is not None:
        local = WEIGHTS_DIR / cfg.local
        if local.is_file():
            _check_recorded_hash(local, cfg)
            return local
    dst = Path(cache_dir()) / cfg.filename
    if not dst.is_file() and not cfg.url:
        where = f" ({WEIGHTS_DIR / cfg.local})" if cfg.local else ""
        raise ValueError(f"model {name!r} ships with the lit repository{where} and has no download URL: the file is missing")
    if not dst.is_file():
        dst.parent.mkdir(parents=True, exist_ok=True)
        download_url(cfg.url, dst, sha256=cfg.sha256, progress=progress)
    _check_recorded_hash(dst, cfg)
    return dst


def load_model(source: str | os.PathLike, device: str | torch.device = "cpu", progress: bool = True):
    """Load a super-feature model.

    Args:
        source: a path to an official FIRe checkpoint (``fire.pth``, ``fire_imagenet.pth``),
            a path to a lit checkpoint, or a registered name (see :func:`list_models`).
        device: where to put the model (``"auto"`` picks CUDA when available).
        progress: show a progress bar when downloading.

    Returns:
        :class:`lit.models.SuperFeatureModel` in eval mode.
    """
    from .models.checkpoint import model_from_checkpoint

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    src = os.fspath(source)
    if os.path.exists(src):
        model = model_from_checkpoint(src, device=device)
        cfg = _registered_file(Path(src))
    elif src in REGISTRY:
        model = model_from_checkpoint(resolve(src, progress=progress), device=device)
        cfg = REGISTRY[src]
    else:
        cfg = model = None
    if model is not None:
        if cfg is not None:
            set_match_rule(model, cfg)
        return model
    raise ValueError(f"{src}: neither an existing checkpoint file nor a registered model name ({', '.join(list_models())})")


def load_match_background(cfg: PretrainedCfg, dim: int) -> torch.Tensor:
    """The background super-features of ``cfg``'s match rule (float32, M x ``dim``).

    Raises:
        ValueError: the file is missing, its sha256 differs from the registry's, or it is
            not an ``.npz`` with a finite M x ``dim`` ``descriptors`` array.
    """
    import numpy as np

    from ._download import file_sha256

    path = WEIGHTS_DIR / cfg.match_background
    if not path.is_file():
        raise ValueError(f"{path}: the match background of {cfg.name!r} is missing")
    if cfg.match_background_sha256 and file_sha256(path) != cfg.match_background_sha256:
        raise ValueError(f"{path}: sha256 differs from the registry's for {cfg.name!r}'s match background")
    try:
        with np.load(path, allow_pickle=False) as z:
            desc = np.asarray(z["descriptors"], dtype=np.float32)
    except (OSError, ValueError, KeyError) as err:
        raise ValueError(f"{path}: not a match background file (npz with 'descriptors': {err})") from None
    if desc.ndim != 2 or desc.shape[0] < 1 or desc.shape[1] != dim or not np.isfinite(desc).all():
        raise ValueError(f"{path}: match background descriptors must be finite M x {dim}, got {desc.shape}")
    return torch.from_numpy(desc)


def set_match_rule(model, cfg: PretrainedCfg) -> None:
    """Give ``model`` the match rule of its registry entry: ``match_threshold``,
    ``match_margin`` and ``match_background`` (on the model's device)."""
    model.match_threshold = None if cfg.match_threshold is None else float(cfg.match_threshold)
    if cfg.match_background:
        dim = int(model.cfg.reduction_dim or model.cfg.lit.dim)
        bg = load_match_background(cfg, dim)
        model.match_background = bg.to(model.device)
        model.match_margin = float(cfg.match_margin)


def _registered_file(path: Path) -> PretrainedCfg | None:
    """The registry entry of a checkpoint given by path (same file name and sha256), if any."""
    from ._download import file_sha256

    for cfg in REGISTRY.values():
        names = {cfg.filename, Path(cfg.local).name if cfg.local else None}
        if cfg.sha256 and path.name in names and file_sha256(path) == cfg.sha256:
            return cfg
    return None


def from_pretrained(name: str, device: str | torch.device = "cpu"):
    """Alias of :func:`load_model` for a registered name."""
    get_pretrained_cfg(name)
    return load_model(name, device=device)
