"""Generalised-mean (GeM) pooling: functional core and module.

GeM (Radenović et al., "Fine-tuning CNN Image Retrieval with No Human Annotation",
TPAMI 2018) pools each channel of a feature map as ``(mean(clamp(x, eps)^p))^(1/p)``:
``p = 1`` is average pooling and ``p -> inf`` tends to max pooling.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..errors import UsageError


def _check_map(x: Tensor) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise UsageError(f"x must be a (B, C, H, W) feature map, got shape {tuple(x.shape)}")


def gem(x: Tensor, p: Tensor | float = 3.0, eps: float = 1e-6) -> Tensor:
    """Generalised-mean pooling over the spatial axes.

    ``y[b, c] = (1/(H W) * sum_{h,w} max(x[b, c, h, w], eps)^p)^(1/p)``.

    Args:
        x: feature map (values below ``eps`` are clamped to ``eps``, so the power is defined).
        p: the exponent, a float or a tensor (a 0-d tensor, or one value per channel
            :math:`(C,)`); differentiable when it is a tensor.
        eps: lower clamp of the activations.

    Returns:
        The pooled descriptors.

    Shape:
        - x: :math:`(B, C, H, W)`.
        - Output: :math:`(B, C)`.

    Example:
        >>> gem(torch.ones(2, 3, 4, 4), p=3.0).shape
        torch.Size([2, 3])
    """
    _check_map(x)
    if isinstance(p, Tensor) and p.dim() == 1:
        p = p.view(1, -1, 1, 1)
    pooled = x.clamp_min(eps).pow(p).mean(dim=(-2, -1), keepdim=True)
    return pooled.pow(1.0 / p).flatten(1)


class GeM(nn.Module):
    """GeM pooling with a learnable exponent.

    Args:
        p: initial exponent (3, as in Radenović et al.).
        eps: lower clamp of the activations.
        trainable: learn ``p`` (a parameter) or keep it fixed (a buffer).

    Shape:
        - Input: :math:`(B, C, H, W)`.
        - Output: :math:`(B, C)`.
    """

    def __init__(self, p: float = 3.0, eps: float = 1e-6, trainable: bool = True) -> None:
        super().__init__()
        if not p > 0:
            raise UsageError(f"GeM exponent p must be positive, got {p}")
        value = torch.tensor(float(p))
        if trainable:
            self.p = nn.Parameter(value)
        else:
            self.register_buffer("p", value)
        self.eps = float(eps)

    def forward(self, x: Tensor) -> Tensor:
        return gem(x, self.p, self.eps)

    def extra_repr(self) -> str:
        return f"p={float(self.p):.4f}, eps={self.eps}"
