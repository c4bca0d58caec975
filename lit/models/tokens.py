"""Local tokens for geometric verification: the backbone's feature-map cells, the finer
geometry source of re-ranking (:mod:`lit.pipeline.rerank`).

A super-feature's position is the centroid of its attention map, which is coarse where the
map is spread; a small model has few of them (lit-effl0: 64 templates per scale). The cells
of the feature map the LIT reads are many and sit where they are (``backbone.reduction``
pixels apart, 16 for the stride-16 backbones). :class:`TokenExtractor` keeps, for each image,
the :data:`TOKEN_NUM` cells of largest norm over :data:`TOKEN_SCALES` (weak cells are sky
and flat walls: they match anything), L2-normalised and projected to :data:`TOKEN_DIM`
dimensions by a PCA fitted on training photos (:func:`fit_token_projection`). They are
returned as :class:`~lit.LocalFeatures` -- each token its own template -- so that a token
file is a feature file (``lit extract --tokens``), resumable like any.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import replace

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from .._image import load_image
from ..errors import UsageError
from ..types import LocalFeatures
from .whitening import pca_whitening

__all__ = ["TOKEN_DIM", "TOKEN_IMAGE_SIZE", "TOKEN_NUM", "TOKEN_SCALES", "TokenExtractor", "fit_token_projection",
           "token_extractor", "tokens_beside"]

#: Image scales of the tokens (the resized image's size times each).
TOKEN_SCALES = (1.414, 1.0, 0.707)
#: Tokens kept per image: the strongest (largest norm) over all scales.
TOKEN_NUM = 2048
#: Dimension of the stored tokens (PCA of the normalised cells).
TOKEN_DIM = 64
#: Longer side (pixels) of the images the tokens come from: finer than lit-effl0's 512 for
#: super-features (the multi-view photos' own size: 600-640).
TOKEN_IMAGE_SIZE = 640


def tokens_beside(features: str | os.PathLike) -> str:
    """Where the token file of a feature file goes: beside it, ``.tokens`` before its suffix
    (``db.h5`` -> ``db.tokens.h5``), as ``lit extract --tokens`` writes it and ``lit search
    --rerank`` looks for it."""
    root, ext = os.path.splitext(os.fspath(features))
    return f"{root}.tokens{ext or '.h5'}"


def _cells(model, images: Tensor, scales: Sequence[float]) -> tuple[Tensor, Tensor, Tensor]:
    """Raw feature-map cells of a batch of normalised-later images at ``scales``.

    Returns:
        ``(cells (B, M, C), positions (B, M, 2) of the cell centres in pixels of the
        images, scales (M,))``, all scales' cells concatenated.
    """
    x = model.normalize(images)
    h0, w0 = x.shape[-2:]
    cells, positions, scale_of = [], [], []
    for s in scales:
        xs = x if s == 1.0 else F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False)
        f = model.backbone(xs.contiguous(memory_format=torch.channels_last)).float()  # (B, C, h, w)
        b, c, h, w = f.shape
        cells.append(f.flatten(2).transpose(1, 2))
        yy, xx = torch.meshgrid(torch.arange(h, device=f.device), torch.arange(w, device=f.device), indexing="ij")
        centre = torch.stack([(xx.flatten() + 0.5) * (w0 / w), (yy.flatten() + 0.5) * (h0 / h)], dim=1)
        positions.append(centre.expand(b, -1, -1))
        scale_of.append(torch.full((h * w,), float(s), device=f.device))
    return torch.cat(cells, 1), torch.cat(positions, 1), torch.cat(scale_of)


def _strongest(cells: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Norms and rows of the ``k`` cells of largest norm of each image (stable order)."""
    norms = cells.norm(dim=2)
    order = torch.sort(norms, dim=1, descending=True, stable=True).indices[:, : min(k, norms.shape[1])]
    return norms.gather(1, order), order


class TokenExtractor(nn.Module):
    """The strongest feature-map cells of a :class:`~lit.models.SuperFeatureModel`'s backbone,
    projected: quacks like the model for :func:`lit.pipeline.extract_to_file`.

    Args:
        model: the super-feature model whose backbone gives the cells.
        weight, bias: the projection ``weight @ unit(cell) + bias`` (:func:`fit_token_projection`).
        scales: image scales (default :data:`TOKEN_SCALES`).
        tokens_num: tokens kept per image (default :data:`TOKEN_NUM`).
        image_size: longer side images are downscaled to (default :data:`TOKEN_IMAGE_SIZE`).
    """

    def __init__(self, model, weight: Tensor, bias: Tensor, scales: Sequence[float] = TOKEN_SCALES,
                 tokens_num: int = TOKEN_NUM, image_size: int = TOKEN_IMAGE_SIZE) -> None:
        super().__init__()
        channels = model.backbone.out_channels
        if weight.dim() != 2 or weight.shape[1] != channels or bias.shape != (weight.shape[0],):
            raise UsageError(f"a token projection of this model maps its {channels} channels: weight (D, {channels}) "
                             f"and bias (D,), got {tuple(weight.shape)} and {tuple(bias.shape)}")
        self.backbone = model.backbone  # the model's own: its weights in the state dict (the fingerprint)
        self.register_buffer("projection_weight", weight.detach().float().clone().to(model.device))
        self.register_buffer("projection_bias", bias.detach().float().clone().to(model.device))
        self._model = (model,)  # not a submodule: normalisation and image sizes are the model's
        self.cfg = replace(model.cfg, reduction_dim=weight.shape[0],
                           runtime=replace(model.cfg.runtime, scales=tuple(scales), features_num=int(tokens_num),
                                           image_size=int(image_size)))
        source = getattr(model, "source", None)
        self.source = f"{source} tokens" if source else None

    @property
    def device(self) -> torch.device:
        return self._model[0].device

    def min_image_size(self, scales: Sequence[float] | None = None) -> int:
        return self._model[0].min_image_size(self.cfg.runtime.scales if scales is None else scales)

    def project(self, cells: Tensor) -> Tensor:
        """Unit-length projected tokens of raw cells ``(..., C) -> (..., D)``."""
        return F.normalize(F.normalize(cells, dim=-1) @ self.projection_weight.T + self.projection_bias, dim=-1)

    @torch.inference_mode()
    def extract_batch(self, images: Tensor, scales: Sequence[float] | None = None, features_num: int | None = None,
                      amp: torch.dtype | None = None) -> list[LocalFeatures]:
        """Tokens of a batch of equal-size images in ``[0, 1]``: the ``features_num`` cells of
        largest norm over ``scales``, strongest first. ``strengths`` are the cells' norms,
        ``superfeature_ids`` number the tokens (each its own template)."""
        model = self._model[0]
        scales = model.usable_scales(images.shape[-2], images.shape[-1],
                                     self.cfg.runtime.scales if scales is None else scales)
        k = self.cfg.runtime.features_num if features_num is None else int(features_num)
        with torch.autocast(device_type=images.device.type, dtype=amp, enabled=amp is not None):
            cells, positions, scale_of = _cells(model, images.float(), scales)
        norms, order = _strongest(cells.float(), k)
        out = []
        for i in range(len(images)):
            rows = order[i]
            out.append(LocalFeatures(
                descriptors=self.project(cells[i, rows].float()).cpu(),
                strengths=norms[i].cpu(),
                scales=scale_of[rows].cpu(),
                superfeature_ids=torch.arange(len(rows)),
                positions=positions[i, rows].float().cpu(),
            ))
        return out

    def extract(self, image, scales: Sequence[float] | None = None, features_num: int | None = None):
        """Tokens of one image (tensor, PIL image or path, as :meth:`SuperFeatureModel.extract`;
        a path or PIL image is downscaled to the extractor's image size)."""
        batch, single = _as_batch(self._model[0], image, self.cfg.runtime.image_size)
        feats = self.extract_batch(batch, scales=scales, features_num=features_num)
        return feats[0] if single else feats


def _as_batch(model, image, image_size: int) -> tuple[Tensor, bool]:
    """``model._as_batch`` with paths and PIL images downscaled to ``image_size``."""
    if isinstance(image, (Image.Image, str, os.PathLike)):
        return load_image(image, image_size).unsqueeze(0).to(model.device, torch.float32), True
    return model._as_batch(image)


def fit_token_projection(model, images: Iterable, dim: int = TOKEN_DIM, scales: Sequence[float] = TOKEN_SCALES,
                         tokens_num: int = TOKEN_NUM, image_size: int = TOKEN_IMAGE_SIZE) -> tuple[Tensor, Tensor]:
    """PCA (no whitening) of the strongest normalised cells of ``images`` (tensors, PIL
    images or paths): the projection of a :class:`TokenExtractor`, ``(weight (dim, C), bias (dim,))``."""
    rows = []
    with torch.inference_mode():
        for image in images:
            batch, _ = _as_batch(model, image, image_size)
            cells, _, _ = _cells(model, batch, model.usable_scales(batch.shape[-2], batch.shape[-1], scales))
            _, order = _strongest(cells, tokens_num)
            rows.append(F.normalize(cells[0, order[0]], dim=1).cpu())
    if not rows:
        raise UsageError("fitting a token projection needs photos")
    return pca_whitening(torch.cat(rows), dim=dim, shrinkage=0.0)


def _random_projection(channels: int, dim: int) -> tuple[Tensor, Tensor]:
    """Seeded random orthonormal rows: the projection of a model without a fitted one."""
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(channels, dim, generator=g, dtype=torch.float64))
    return q.T.float().contiguous(), torch.zeros(dim)


def token_extractor(model) -> TokenExtractor:
    """The :class:`TokenExtractor` of a model: the projection packaged with it
    (``weights/<name>.tokens.safetensors``, lit-effl0's fitted on its 47 training photos), or
    for any other model a seeded random orthonormal one to :data:`TOKEN_DIM` dimensions
    (weaker: README "Re-ranking")."""
    from .._resources import weights_folder

    source = getattr(model, "source", None)
    path = weights_folder() / f"{source}.tokens.safetensors" if source and os.sep not in source else None
    if path is not None and path.is_file():
        from safetensors.torch import load_file

        t = load_file(str(path))
        return TokenExtractor(model, t["weight"], t["bias"])
    channels = model.backbone.out_channels
    return TokenExtractor(model, *_random_projection(channels, min(TOKEN_DIM, channels)))

