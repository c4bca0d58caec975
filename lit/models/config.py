"""Typed configuration of a super-feature model, stored inside lit checkpoints."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from ..errors import UsageError
from ..matching import FIRE_THRESHOLD

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FIRE_SCALES = (2.0, 1.414, 1.0, 0.707, 0.5, 0.353, 0.25)


@dataclass(frozen=True)
class BackboneConfig:
    """A timm CNN cut after one feature stage.

    Args:
        name: timm model name (``resnet50``, ``efficientnet_lite0``, any CNN timm can
            build with ``features_only=True``).
        out_index: index into the model's ``feature_info`` of the stage to keep
            (3 is stride 16 for ResNets and EfficientNets: ResNet-50 ``layer3``).
        output_stride: ``None`` keeps the network's strides; 16 or 8 dilates the later
            stages instead of striding (timm ``output_stride``), so that a deeper stage
            keeps a finer map (EfficientNet-Lite0 stage 4: 320 channels at stride 16).
    """

    name: str = "resnet50"
    out_index: int = 3
    output_stride: int | None = None

    def __post_init__(self) -> None:
        if self.output_stride not in (None, 8, 16, 32):
            raise ValueError(f"BackboneConfig.output_stride must be None, 8, 16 or 32, got {self.output_stride!r}")


@dataclass(frozen=True)
class LITConfig:
    """Local feature Integration Transformer sizes (FIRe: T=6, N=256, dim=1024)."""

    T: int = 6
    N: int = 256
    dim: int = 1024

    def __post_init__(self) -> None:
        for name in ("T", "N", "dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"LITConfig.{name} must be a positive int, got {value!r}")
        if self.dim % 2:
            raise ValueError(f"LITConfig.dim must be even (the MLP is dim -> dim/2), got {self.dim}")


@dataclass(frozen=True)
class RuntimeConfig:
    """Extraction defaults: normalisation, image size, scales and how many features to keep."""

    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    image_size: int = 1024
    features_num: int = 1000
    scales: tuple[float, ...] = FIRE_SCALES
    training_scales: tuple[float, ...] = (1.0,)


@dataclass(frozen=True)
class MatchConfig:
    """The model's match rule (:meth:`SuperFeatureModel.match_rule`), saved with its weights.

    Args:
        threshold: minimum cosine similarity of a match (FIRe's 0.9), ``None`` for none.
        margin: margin of the background test, ``None`` for no background test.
        background_size: rows ``M`` of the background bank: the super-features of
            unrelated photos that a match must beat by ``margin``. The bank itself is the
            model's ``match_background`` buffer :math:`(M, d)`, saved in the weights file,
            so that a fine-tuned checkpoint keeps its rule. 0 (no bank) exactly when
            ``margin`` is ``None``.
    """

    threshold: float | None = FIRE_THRESHOLD
    margin: float | None = None
    background_size: int = 0

    def __post_init__(self) -> None:
        for name in ("threshold", "margin"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not math.isfinite(value)):
                raise UsageError(f"MatchConfig.{name} must be a finite number or None, got {value!r}")
        if self.threshold is not None and self.threshold > 1:
            raise UsageError(f"MatchConfig.threshold is a cosine similarity (at most 1), got {self.threshold}")
        if self.margin is not None and not -2 <= self.margin <= 2:
            raise UsageError(f"MatchConfig.margin is a difference of cosine similarities (in -2..2), got {self.margin}")
        if isinstance(self.background_size, bool) or not isinstance(self.background_size, int) or self.background_size < 0:
            raise UsageError(f"MatchConfig.background_size must be an int >= 0, got {self.background_size!r}")
        if (self.margin is None) != (self.background_size == 0):
            raise UsageError("MatchConfig: a margin needs a background bank and a bank needs a margin "
                             f"(margin {self.margin}, background_size {self.background_size})")


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a model.

    Args:
        backbone: which CNN and where it is cut.
        lit: LIT sizes.
        reduction_dim: output dimension of the 1x1 reduction (FIRe: 128); ``None`` for a
            model without reduction (e.g. the ImageNet pre-training checkpoint).
        runtime: extraction defaults.
        match: the match rule (default FIRe's: cosine >= 0.9).
    """

    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    lit: LITConfig = field(default_factory=LITConfig)
    reduction_dim: int | None = 128
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    match: MatchConfig = field(default_factory=MatchConfig)

    @property
    def descriptor_dim(self) -> int:
        """Dimension of the descriptors (``reduction_dim``, else the LIT's)."""
        return int(self.reduction_dim or self.lit.dim)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of builtins (safe to store in a ``weights_only`` checkpoint)."""
        d = asdict(self)
        for key in ("mean", "std", "scales", "training_scales"):
            d["runtime"][key] = list(d["runtime"][key])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError``. A dict without
        ``match`` (written before the match rule was part of the config: checkpoint format
        version 1) gets FIRe's rule."""
        if not isinstance(d, dict):
            raise TypeError(f"model config must be a dict, got {type(d).__name__}")
        _check_keys(cls, d, "model config")
        backbone = d.get("backbone", {})
        lit = d.get("lit", {})
        runtime = dict(d.get("runtime", {}))
        match = d.get("match") or {}
        _check_keys(BackboneConfig, backbone, "backbone config")
        _check_keys(LITConfig, lit, "lit config")
        _check_keys(RuntimeConfig, runtime, "runtime config")
        _check_keys(MatchConfig, match, "match config")
        for key in ("mean", "std", "scales", "training_scales"):
            if key in runtime:
                runtime[key] = tuple(float(v) for v in runtime[key])
        return cls(
            backbone=BackboneConfig(**backbone),
            lit=LITConfig(**lit),
            reduction_dim=d.get("reduction_dim", 128),
            runtime=RuntimeConfig(**runtime),
            match=MatchConfig(**match),
        )


def _check_keys(klass: type, d: dict, what: str) -> None:
    known = {f.name for f in fields(klass)}
    unknown = set(d) - known
    if unknown:
        raise ValueError(f"unknown keys in {what}: {sorted(unknown)} (known: {sorted(known)})")


def lit_effl0_config() -> ModelConfig:
    """The small offline model: ImageNet EfficientNet-Lite0 + LIT at stride 16.

    The backbone runs to its last stage (320 channels) with that stage dilated instead of
    strided (``output_stride=16``): measured on the real multi-view photos, an untrained
    LIT on it retrieves far better than on the 112-channel stride-16 stage (mAP over all
    27 scenes 36 vs 21). LIT sizes (T=1, N=64, dim=256) keep CPU extraction fast (one
    iteration: with the k-means initialisation of the trainer, ``init.lit=kmeans``, three
    scored no better);
    normalisation is the one the Lite0 weights were trained with (mean = std = 0.5).
    """
    return ModelConfig(
        backbone=BackboneConfig("tf_efficientnet_lite0", 4, output_stride=16),
        lit=LITConfig(T=1, N=64, dim=256),
        reduction_dim=128,
        runtime=RuntimeConfig(
            mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), image_size=512, features_num=300,
            scales=(1.414, 1.0, 0.707, 0.5), training_scales=(1.0,),
        ),
    )
