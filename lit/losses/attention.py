"""Attention decorrelation loss of FIRe (SPEC section 5).

The N attention maps of one image should look at different regions. The loss is the
average cosine similarity between distinct maps: 0 when the maps have disjoint
supports, 1 when they are all identical (up to scale).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import UsageError
from ._checks import check_ndim


def attention_decorrelation_loss(attention: Tensor) -> Tensor:
    """Mean off-diagonal cosine similarity between the attention maps of each image.

    Per image: flatten each of the ``N`` maps to a vector of length ``H·W``,
    L2-normalise it (an all-zero map stays zero and counts as orthogonal to the others),
    build the ``N×N`` cosine-similarity matrix and average its ``N(N−1)`` off-diagonal
    entries. For a batch, the loss is the **mean** of these per-image values.

    Args:
        attention: attention maps of one image or of a batch of images.

    Returns:
        A scalar tensor.

    Raises:
        UsageError: on a wrong number of dimensions, or ``N < 2`` (no pair of maps).

    Shape:
        - attention: :math:`(B, N, H, W)` or :math:`(N, H, W)`.
        - Output: :math:`()`.

    Example:
        >>> maps = torch.zeros(2, 4, 4)
        >>> maps[0, :2], maps[1, 2:] = 1.0, 1.0   # disjoint supports
        >>> float(attention_decorrelation_loss(maps))
        0.0
    """
    check_ndim(attention, (3, 4), "attention", "(B, N, H, W) or (N, H, W)")
    if attention.dim() == 3:
        attention = attention.unsqueeze(0)
    b, n = attention.shape[:2]
    if n < 2:
        raise UsageError(f"attention decorrelation needs at least 2 maps per image, got N={n}")
    if b == 0:
        raise UsageError("attention decorrelation needs at least one image, got B=0")
    maps = F.normalize(attention.reshape(b, n, -1), p=2, dim=2)
    sim = torch.bmm(maps, maps.transpose(1, 2))  # (B, N, N)
    off_diagonal = sim.sum(dim=(1, 2)) - sim.diagonal(dim1=1, dim2=2).sum(dim=1)
    return (off_diagonal / (n * (n - 1))).mean()


class AttentionDecorrelationLoss(nn.Module):
    """Module form of :func:`attention_decorrelation_loss` (no parameters).

    Shape:
        - Input: :math:`(B, N, H, W)` or :math:`(N, H, W)`.
        - Output: :math:`()`.
    """

    def forward(self, attention: Tensor) -> Tensor:
        return attention_decorrelation_loss(attention)
