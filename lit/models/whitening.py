"""PCA-whitening with shrinkage, used to initialise the 1x1 reduction layer."""

from __future__ import annotations

import torch
from torch import Tensor


def pca_whitening(features: Tensor, dim: int = 128, shrinkage: float = 1.0) -> tuple[Tensor, Tensor]:
    """Learn ``x -> P (x - m)`` keeping the ``dim`` leading principal directions.

    ``P = diag(lambda^(-shrinkage / 2)) U^T`` with ``lambda, U`` the eigenvalues and
    eigenvectors of the covariance of ``features``: ``shrinkage=1`` whitens fully, ``0`` is a
    plain PCA rotation, values between shrink the whitening of weak directions.

    Args:
        features: :math:`(M, D)` training descriptors, ``M > dim``.
        dim: output dimension.
        shrinkage: power applied to the eigenvalues.

    Returns:
        ``(weight, bias)`` of shapes :math:`(dim, D)` and :math:`(dim,)`; the map is
        ``weight @ x + bias``.
    """
    if features.dim() != 2:
        raise ValueError(f"features must be (M, D), got {tuple(features.shape)}")
    m, d = features.shape
    if dim > d:
        raise ValueError(f"cannot reduce {d}-d features to {dim} dimensions")
    if m < 2:
        raise ValueError(f"need at least 2 features to learn PCA-whitening, got {m}")
    x = features.detach().double()
    mean = x.mean(dim=0)
    xc = x - mean
    cov = xc.T @ xc / (m - 1)
    eigval, eigvec = torch.linalg.eigh(cov)  # ascending
    eigval = eigval.flip(0)[:dim].clamp_min(1e-9)
    eigvec = eigvec.flip(1)[:, :dim]
    # fix the sign of each eigenvector for reproducibility: largest |component| positive
    signs = torch.sign(eigvec.gather(0, eigvec.abs().argmax(dim=0, keepdim=True)))
    eigvec = eigvec * signs
    weight = (eigval.pow(-shrinkage / 2).unsqueeze(1) * eigvec.T)
    bias = -weight @ mean
    return weight.float(), bias.float()
