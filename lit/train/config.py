"""Typed configuration of a training experiment (frozen dataclasses).

YAML or TOML files are read only at the command-line edge (:func:`load_config`); the
trainer sees :class:`TrainConfig` objects. Unknown keys and wrongly typed values raise
``ValueError`` naming the dotted key (``optim.lr``), and the resolved configuration is
written next to the results (:func:`save_config`).

Example:
    >>> cfg = config_from_dict({"optim": {"lr": 1e-4}, "data": {"source": "folder", "root": "photos"}})
    >>> cfg.optim.lr, cfg.optim.tuples_per_step
    (0.0001, 5)
"""

from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from ..errors import UsageError
from ..models.config import ModelConfig


@dataclass(frozen=True)
class ViewConfig:
    """Random synthetic other views of a photo (:mod:`lit.train.views`).

    Args:
        scale: range of the crop side relative to the image side (the crop is zoomed back
            to the full image size).
        rotation: largest in-plane rotation, in degrees (uniform in ``±rotation``).
        perspective: largest displacement of each crop corner, relative to the crop size.
        brightness: additive brightness change, uniform in ``±brightness``.
        contrast: contrast factor, uniform in ``1 ± contrast``.
        saturation: saturation factor, uniform in ``1 ± saturation``.
        hue: hue shift as a fraction of the colour circle, uniform in ``±hue``.
        blur_probability: probability of a Gaussian blur.
        blur_sigma: range of the blur's standard deviation, in pixels.
        night_probability: probability of a "night" change after the others: a gamma
            darkening (exponent uniform in ``night_gamma``), a random warm or cold colour cast
            (per-channel gains in ``1 ± night_cast``) and Gaussian sensor noise (standard
            deviation uniform in ``[0, night_noise]``). ``0`` draws no extra random numbers, so
            views of earlier configurations are unchanged.
    """

    scale: tuple[float, float] = (0.6, 1.0)
    rotation: float = 15.0
    perspective: float = 0.1
    brightness: float = 0.2
    contrast: float = 0.3
    saturation: float = 0.3
    hue: float = 0.03
    blur_probability: float = 0.3
    blur_sigma: tuple[float, float] = (0.3, 1.5)
    night_probability: float = 0.0
    night_gamma: tuple[float, float] = (1.5, 3.0)
    night_cast: float = 0.2
    night_noise: float = 0.03

    def __post_init__(self) -> None:
        if not 0 <= self.night_probability <= 1:
            raise UsageError(f"views.night_probability must be in [0, 1], got {self.night_probability}")
        if not 0 < self.night_gamma[0] <= self.night_gamma[1]:
            raise UsageError(f"views.night_gamma must satisfy 0 < low <= high, got {self.night_gamma}")
        if not 0 <= self.night_cast < 1 or self.night_noise < 0:
            raise UsageError("views.night_cast must be in [0, 1) and views.night_noise >= 0")
        lo, hi = self.scale
        if not 0 < lo <= hi <= 1:
            raise UsageError(f"views.scale must satisfy 0 < low <= high <= 1, got {self.scale}")
        if not 0 <= self.blur_probability <= 1:
            raise UsageError(f"views.blur_probability must be in [0, 1], got {self.blur_probability}")
        if not 0 < self.blur_sigma[0] <= self.blur_sigma[1]:
            raise UsageError(f"views.blur_sigma must satisfy 0 < low <= high, got {self.blur_sigma}")
        for name in ("rotation", "perspective", "brightness", "contrast", "saturation", "hue"):
            if getattr(self, name) < 0:
                raise UsageError(f"views.{name} must be >= 0, got {getattr(self, name)}")


@dataclass(frozen=True)
class DataConfig:
    """Where the training tuples come from and how they are mined.

    Args:
        source: ``"sfm120k"`` (a cirtorch-style database file: images, cluster ids, query and
            positive indices) or ``"folder"`` (your own photos; one sub-folder per scene is
            optional; positives are synthetic views).
        root: ``sfm120k``: the folder that image names in the database are relative to
            (cirtorch: ``.../train/retrieval-SfM-120k/ims``); ``folder``: the photo folder.
        db_file: ``sfm120k`` only: the database pickle (``retrieval-SfM-120k.pkl``).
        image_size: longer image side after downscaling (never upscaled).
        num_negatives: ``K`` hard negatives per tuple.
        queries_per_epoch: tuples per epoch (query images drawn at random each epoch).
        pool_size: size of the random pool the negatives are mined from each epoch.
        flip_probability: probability of a horizontal flip, drawn for every image.
        mining_scales: scales of the global descriptor used for mining.
        val_images: ``folder``: photos held out for validation (never trained on).
        val_views: ``folder``: synthetic query views per held-out photo.
        val_queries: ``sfm120k``: at most this many validation queries (``None``: all).
        num_workers: data-loading worker processes.
        scene_positives: ``folder``: probability that a query's positive is another real
            photo of its scene folder (when the scene has one) instead of a synthetic view.
        views: synthetic view parameters (``folder`` positives and validation queries).
    """

    source: Literal["sfm120k", "folder"] = "sfm120k"
    root: str = ""
    db_file: str | None = None
    image_size: int = 1024
    num_negatives: int = 5
    queries_per_epoch: int = 2000
    pool_size: int = 20000
    flip_probability: float = 0.5
    mining_scales: tuple[float, ...] = (1.0,)
    val_images: int = 10
    val_views: int = 2
    val_queries: int | None = None
    num_workers: int = 0
    scene_positives: float = 0.0
    views: ViewConfig = field(default_factory=ViewConfig)

    def __post_init__(self) -> None:
        for name in ("image_size", "queries_per_epoch", "pool_size"):
            if getattr(self, name) < 1:
                raise UsageError(f"data.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("num_negatives", "val_images", "val_views", "num_workers"):
            if getattr(self, name) < 0:
                raise UsageError(f"data.{name} must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.scene_positives <= 1:
            raise UsageError(f"data.scene_positives must be in [0, 1], got {self.scene_positives}")
        if not 0 <= self.flip_probability <= 1:
            raise UsageError(f"data.flip_probability must be in [0, 1], got {self.flip_probability}")
        if not self.mining_scales:
            raise UsageError("data.mining_scales must not be empty")


@dataclass(frozen=True)
class InitConfig:
    """Initial weights and the PCA-whitening of the reduction layer.

    Args:
        checkpoint: path to a lit or official FIRe checkpoint, or a registered name
            (:func:`lit.load_model`); ``None`` builds ``model`` from scratch.
        pretrained_backbone: without ``checkpoint``: ImageNet weights from timm.
        whitening: ``"auto"`` initialises the reduction by PCA-whitening unless it comes
            trained with ``checkpoint`` (so: for new models and for checkpoints without one,
            like ``fire_imagenet.pth``); ``"always"`` / ``"never"``.
        whitening_images: training images whose super-features (all ``N`` of each, at
            the training scales) are whitened.
        shrinkage: eigenvalue power of the whitening (1: full whitening). Whiten many more
            super-features than output dimensions: full whitening of few samples blows up
            noise directions, and the reduced-space loss then hurts (seen on tiny runs;
            0.5 with 20x more features than dimensions behaved well).
        lit: ``"random"`` keeps the LIT as built (or as the checkpoint has it);
            ``"kmeans"`` re-initialises it from the backbone's local features of the
            whitening images (:func:`lit.models.init_lit_from_tokens`: templates are
            k-means clusters of real features) before the reduction is whitened.
        lit_sharpness: attention sharpness of the ``"kmeans"`` initialisation (logit per
            unit of cosine; 30, 100 and 537 trained equally well in the scene CV of
            ``weights/README.md``; much higher saturates the softmax, and its near-zero
            gradients then make Adam's first steps noise).
        lit_background: ``0``: every template of the ``"kmeans"`` initialisation is a
            cluster; ``> 0``: the last one is a background template that takes the weak
            local features (low raw norm), gated this sharply, and the others are clusters
            of the strong ones (``init_lit_from_tokens(background=...)``).
        lit_background_fraction: share of the local features that count as weak.
    """

    checkpoint: str | None = None
    pretrained_backbone: bool = False
    whitening: Literal["auto", "always", "never"] = "auto"
    whitening_images: int = 1000
    shrinkage: float = 1.0
    lit: Literal["random", "kmeans"] = "random"
    lit_sharpness: float = 100.0
    lit_background: float = 0.0
    lit_background_fraction: float = 0.5

    def __post_init__(self) -> None:
        if self.lit not in ("random", "kmeans"):
            raise UsageError(f"init.lit must be 'random' or 'kmeans', got {self.lit!r}")
        if self.lit_sharpness <= 0:
            raise UsageError(f"init.lit_sharpness must be positive, got {self.lit_sharpness}")
        if self.lit_background < 0:
            raise UsageError(f"init.lit_background must be >= 0, got {self.lit_background}")
        if not 0 < self.lit_background_fraction < 1:
            raise UsageError(f"init.lit_background_fraction must be in (0, 1), got {self.lit_background_fraction}")


@dataclass(frozen=True)
class OptimConfig:
    """Adam with exponential learning-rate decay per epoch (FIRe recipe).

    Args:
        epochs: number of epochs.
        lr: initial learning rate.
        weight_decay: Adam's (L2) weight decay.
        lr_gamma: learning rate multiplied by this after every epoch.
        tuples_per_step: tuples whose gradients are accumulated per optimiser step; the
            step's loss is the *mean* of its tuples' losses.
        freeze_backbone: train LIT only, keeping the (e.g. ImageNet) backbone fixed: faster,
            and less over-fitting on small photo collections.
        backbone_lr: learning rate of the trained backbone parameters (``None``: ``lr``);
            a pretrained backbone is usually fine-tuned more gently than LIT is trained.
        backbone_trainable_from: name of the first backbone module that is trained
            (e.g. ``"net.blocks.5"`` for EfficientNet, ``"net.layer3"`` for ResNet, as listed by
            ``model.backbone.named_modules()``); the modules registered before it stay
            frozen. ``None``: the whole backbone is trained (unless ``freeze_backbone``).
        frozen: parameters left untrained, by name prefix as in ``model.named_parameters()``
            (e.g. ``["lit.project_k", "lit.project_q"]`` keeps a data-driven attention as
            initialised while the templates, values and MLP train).
    """

    epochs: int = 200
    lr: float = 3e-5
    weight_decay: float = 1e-4
    lr_gamma: float = 0.99
    tuples_per_step: int = 5
    freeze_backbone: bool = False
    backbone_lr: float | None = None
    backbone_trainable_from: str | None = None
    frozen: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if any(not prefix for prefix in self.frozen):
            raise UsageError("optim.frozen: empty name prefix (it would freeze everything)")
        if self.backbone_lr is not None and self.backbone_lr <= 0:
            raise UsageError("optim.backbone_lr must be > 0 (or null: the same as optim.lr)")
        if self.freeze_backbone and self.backbone_trainable_from is not None:
            raise UsageError("optim.freeze_backbone and optim.backbone_trainable_from exclude each other")
        if self.epochs < 0 or self.tuples_per_step < 1:
            raise UsageError("optim.epochs must be >= 0 and optim.tuples_per_step >= 1")
        if self.lr <= 0 or self.weight_decay < 0 or self.lr_gamma <= 0:
            raise UsageError("optim.lr and optim.lr_gamma must be > 0, optim.weight_decay >= 0")


@dataclass(frozen=True)
class LossConfig:
    """Weights and parameters of the FIRe losses (SPEC section 5).

    Args:
        attention_weight: weight of the attention decorrelation loss.
        superfeature_weight: weight of the super-feature loss.
        margin: contrastive margin for the negatives.
        ratio: ratio-test threshold of the matching (``None``: off).
        space: ``"reduced"``: the super-feature loss sees the reduced descriptors (the
            frozen PCA-whitening is part of the graph); ``"lit"``: the ``D``-dim LIT outputs.
    """

    attention_weight: float = 0.1
    superfeature_weight: float = 0.02
    margin: float = 1.1
    ratio: float | None = 0.9
    space: Literal["reduced", "lit"] = "reduced"


@dataclass(frozen=True)
class TrainConfig:
    """A whole training experiment.

    Args:
        model: architecture and runtime settings (``runtime.training_scales`` are the
            training scales). ``None``: the default FIRe model, or the checkpoint's own
            architecture when ``init.checkpoint`` is set.
        init: initial weights and whitening.
        data: tuples and validation data.
        optim: optimiser and schedule.
        loss: loss weights.
        seed: seeds the model initialisation, the per-epoch sampling and mining, flips,
            synthetic views and the validation views.
        precision: ``"auto"`` (bf16 autocast on CUDA, fp32 on CPU), ``"fp32"`` or ``"bf16"``.
        validate_every: validate every this many epochs (0: never).
        keep_checkpoints: number of epoch checkpoints kept in the output folder.
    """

    model: ModelConfig | None = None
    init: InitConfig = field(default_factory=InitConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    seed: int = 0
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    validate_every: int = 1
    keep_checkpoints: int = 2

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with dotted keys changed: ``cfg.replace(**{"optim.lr": 1e-4})``."""
        d = config_to_dict(self)
        for key, value in changes.items():
            _set_dotted(d, key, value)
        return config_from_dict(d)


# ---------------------------------------------------------------------- dict conversion
def config_to_dict(cfg: Any) -> Any:
    """Plain builtins (dicts, lists, numbers, strings, ``None``) for YAML/TOML/JSON."""
    if isinstance(cfg, ModelConfig):
        return cfg.to_dict()
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return {f.name: config_to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, (tuple, list)):
        return [config_to_dict(v) for v in cfg]
    return cfg


def config_from_dict(d: dict[str, Any]) -> TrainConfig:
    """Build a :class:`TrainConfig` from plain builtins.

    Raises:
        ValueError: unknown keys or values of the wrong type, naming the dotted key.
    """
    return _build(TrainConfig, d, "")


def _build(klass: type, d: Any, where: str) -> Any:
    if not isinstance(d, dict):
        raise UsageError(f"{where or 'config'}: expected a mapping, got {type(d).__name__}")
    hints = typing.get_type_hints(klass)
    known = {f.name for f in dataclasses.fields(klass)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise UsageError(
            f"unknown key(s) {', '.join(repr(_join(where, k)) for k in unknown)} "
            f"(known in {where or 'the top level'}: {', '.join(sorted(known))})"
        )
    kwargs = {k: _convert(hints[k], v, _join(where, k)) for k, v in d.items()}
    try:
        return klass(**kwargs)
    except (TypeError, ValueError) as err:
        raise UsageError(f"{where or 'config'}: {err}") from None


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else str(key)


_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _convert(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            if type(None) in args:
                return None
            raise UsageError(f"{where}: must not be null")
        inner = [a for a in args if a is not type(None)]
        errors = []
        for a in inner:
            try:
                return _convert(a, value, where)
            except ValueError as err:
                errors.append(str(err))
        raise UsageError("; ".join(errors))
    if tp is ModelConfig:
        try:
            return ModelConfig.from_dict(value)
        except (TypeError, ValueError) as err:
            raise UsageError(f"{where}: {err}") from None
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, where)
    if origin is Literal:
        if value not in args:
            raise UsageError(f"{where}: must be one of {', '.join(map(repr, args))}, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise UsageError(f"{where}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise UsageError(f"{where}: expected {len(args)} values, got {len(value)}")
        return tuple(_convert(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=True)))
    if tp is bool:
        if not isinstance(value, bool):
            raise UsageError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UsageError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
            value = float(value)  # YAML 1.1 reads "3e-5" (no dot) as a string
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UsageError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise UsageError(f"{where}: expected a string, got {value!r}")
        return value
    raise TypeError(f"{where}: unsupported config type {tp!r}")  # pragma: no cover


def _set_dotted(d: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = d
    for p in parts[:-1]:
        if node.get(p) is None:
            node[p] = {}
        node = node[p]
        if not isinstance(node, dict):
            raise UsageError(f"cannot set {key!r}: {p!r} is not a section")
    node[parts[-1]] = value


# ---------------------------------------------------------------------- files
def load_config(path: str | os.PathLike, overrides: typing.Sequence[str] = ()) -> TrainConfig:
    """Read a YAML (``.yaml``/``.yml``) or TOML (``.toml``) experiment file.

    Args:
        path: the file.
        overrides: ``"dotted.key=value"`` strings applied on top (values parsed as YAML,
            e.g. ``optim.lr=1e-4``, ``data.mining_scales=[1, 0.7]``).

    Raises:
        ValueError: unreadable file, unknown keys, wrong types.
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        raw = f.read()
    if path.lower().endswith(".toml"):
        import tomllib

        try:
            d = tomllib.loads(raw.decode("utf-8"))
        except tomllib.TOMLDecodeError as err:
            raise UsageError(f"{path}: invalid TOML ({err})") from None
    else:
        import yaml

        try:
            d = yaml.safe_load(raw) or {}
        except yaml.YAMLError as err:
            raise UsageError(f"{path}: invalid YAML ({err})") from None
    if not isinstance(d, dict):
        raise UsageError(f"{path}: the top level must be a mapping, got {type(d).__name__}")
    for item in overrides:
        if "=" not in item:
            raise UsageError(f"override {item!r} must look like key=value")
        key, text = item.split("=", 1)
        import yaml

        _set_dotted(d, key.strip(), yaml.safe_load(text))
    try:
        return config_from_dict(d)
    except ValueError as err:
        raise UsageError(f"{path}: {err}") from None


def check_config(cfg: TrainConfig) -> list[str]:
    """Problems of a configuration that its types cannot catch.

    Raises:
        ValueError: a setting that cannot train (fewer tuples per epoch than one step).

    Returns:
        Warnings, one line each (tuples lost to rounding).
    """
    d, o = cfg.data, cfg.optim
    if d.queries_per_epoch < o.tuples_per_step:
        raise UsageError(
            f"data.queries_per_epoch={d.queries_per_epoch} is less than one optimiser step "
            f"(optim.tuples_per_step={o.tuples_per_step}): raise it or lower optim.tuples_per_step"
        )
    out = []
    used = (d.queries_per_epoch // o.tuples_per_step) * o.tuples_per_step
    if used != d.queries_per_epoch:
        out.append(
            f"data.queries_per_epoch={d.queries_per_epoch} is not a multiple of optim.tuples_per_step="
            f"{o.tuples_per_step}: each epoch trains {used} tuples"
        )
    return out


#: Below this many held-out photos, ``lit train`` warns that validation mAP means little.
MIN_VALIDATION_IMAGES = 20


def save_config(cfg: TrainConfig, path: str | os.PathLike) -> None:
    """Write ``cfg`` as YAML (readable back with :func:`load_config`)."""
    import yaml

    from .._fileio import atomic_write

    with atomic_write(path, "w", encoding="utf-8") as f:
        yaml.safe_dump(config_to_dict(cfg), f, sort_keys=False, default_flow_style=None)
