"""Synthetic other views of a photo: a random homography and photometric changes (kornia).

Used as training positives for "your own photos" (no second image of the scene needed)
and as validation queries. Every random number is drawn from a ``torch.Generator`` the
caller passes, so a view is reproducible from its seed.

Geometry. A crop of side ``s`` (relative, uniform in ``cfg.scale``) is placed at random
inside the image, rotated by up to ``±cfg.rotation`` degrees about its centre, and each of
its corners is moved by up to ``±cfg.perspective`` of the crop size. The homography ``H``
maps that quadrilateral onto the full output frame (same size as the input), so the view
zooms in on the crop. Pixels that fall outside the photo are filled by reflection.

Photometry (in this order, each in ``[0, 1]``): additive brightness, contrast, saturation,
hue shift, then an optional Gaussian blur and an optional "night" change (gamma darkening,
colour cast, sensor noise).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from ..errors import UsageError
from .config import ViewConfig


class SyntheticView(NamedTuple):
    """A synthetic view and its geometry.

    Shape:
        - image: :math:`(3, H, W)` or :math:`(B, 3, H, W)` in ``[0, 1]``.
        - homography: :math:`(3, 3)` or :math:`(B, 3, 3)`, mapping pixel coordinates
          ``(x, y, 1)`` of the input image to those of the view (pixel centres at integers).
    """

    image: Tensor
    homography: Tensor


def _uniform(generator: torch.Generator | None, low: float, high: float, n: int = 1) -> Tensor:
    u = torch.rand(n, generator=generator, dtype=torch.float64)
    return low + (high - low) * u


def sample_homography(
    height: int, width: int, cfg: ViewConfig | None = None, generator: torch.Generator | None = None
) -> Tensor:
    """A random homography from an ``height x width`` image to a view of the same size.

    Returns:
        :math:`(3, 3)` float64 matrix ``H`` with ``view_xy ~ H @ image_xy``.
    """
    from kornia.geometry.transform import get_perspective_transform

    cfg = cfg if cfg is not None else ViewConfig()
    if height < 2 or width < 2:
        raise UsageError(f"image must be at least 2x2 pixels, got {height}x{width}")
    w1, h1 = float(width - 1), float(height - 1)
    s = float(_uniform(generator, *cfg.scale))
    cw, ch = s * w1, s * h1
    cx = float(_uniform(generator, cw / 2, w1 - cw / 2))
    cy = float(_uniform(generator, ch / 2, h1 - ch / 2))
    angle = math.radians(float(_uniform(generator, -cfg.rotation, cfg.rotation)))
    jitter = _uniform(generator, -cfg.perspective, cfg.perspective, 8).view(4, 2)
    jitter = jitter * torch.tensor([cw, ch], dtype=torch.float64)
    half = torch.tensor([[-cw, -ch], [cw, -ch], [cw, ch], [-cw, ch]], dtype=torch.float64) / 2
    rot = torch.tensor(
        [[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]], dtype=torch.float64
    )
    src = half @ rot.T + torch.tensor([cx, cy], dtype=torch.float64) + jitter
    dst = torch.tensor([[0.0, 0.0], [w1, 0.0], [w1, h1], [0.0, h1]], dtype=torch.float64)
    hom = get_perspective_transform(src.unsqueeze(0), dst.unsqueeze(0))[0]
    return hom / hom[2, 2]


def _photometric(image: Tensor, cfg: ViewConfig, generator: torch.Generator | None) -> Tensor:
    import kornia.enhance as ke
    import kornia.filters as kf

    x = image.unsqueeze(0)
    brightness = float(_uniform(generator, -cfg.brightness, cfg.brightness))
    contrast = float(_uniform(generator, 1 - cfg.contrast, 1 + cfg.contrast))
    saturation = float(_uniform(generator, max(0.0, 1 - cfg.saturation), 1 + cfg.saturation))
    hue = float(_uniform(generator, -cfg.hue, cfg.hue)) * 2 * math.pi
    blur = float(_uniform(generator, 0.0, 1.0)) < cfg.blur_probability
    sigma = float(_uniform(generator, *cfg.blur_sigma))
    x = ke.adjust_brightness(x, brightness)
    x = ke.adjust_contrast(x, max(contrast, 0.0))
    x = ke.adjust_saturation(x, saturation).clamp(0, 1)
    x = ke.adjust_hue(x, hue).clamp(0, 1)
    if blur:
        k = 2 * math.ceil(3 * sigma) + 1
        x = kf.gaussian_blur2d(x, (k, k), (sigma, sigma), border_type="reflect")
    if cfg.night_probability > 0 and float(_uniform(generator, 0.0, 1.0)) < cfg.night_probability:
        x = _night(x.clamp(0, 1), cfg, generator)
    return x[0].clamp(0, 1)


def _night(x: Tensor, cfg: ViewConfig, generator: torch.Generator | None) -> Tensor:
    """Gamma darkening, a colour cast and sensor noise: a crude night shot of a day photo."""
    gamma = float(_uniform(generator, *cfg.night_gamma))
    gains = _uniform(generator, 1 - cfg.night_cast, 1 + cfg.night_cast, 3).to(x)
    sigma = float(_uniform(generator, 0.0, cfg.night_noise))
    noise = torch.randn(x.shape, generator=generator, dtype=torch.float64).to(x)
    return (x.pow(gamma) * gains.view(1, 3, 1, 1) + sigma * noise).clamp(0, 1)


def synthetic_view(
    image: Tensor, cfg: ViewConfig | None = None, generator: torch.Generator | None = None
) -> SyntheticView:
    """A random other view of ``image``: homography, then colour jitter and blur.

    Args:
        image: RGB in ``[0, 1]``.
        cfg: ranges of the random changes.
        generator: source of randomness (the same seed gives the same view).

    Returns:
        :class:`SyntheticView` ``(image, homography)``, same size as the input.

    Shape:
        - image: :math:`(3, H, W)` or :math:`(B, 3, H, W)` (one draw per image).
        - Output: like the input; homography :math:`(3, 3)` or :math:`(B, 3, 3)`.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> view = synthetic_view(torch.rand(3, 48, 64), generator=g)
        >>> view.image.shape, view.homography.shape
        (torch.Size([3, 48, 64]), torch.Size([3, 3]))
    """
    from kornia.geometry.transform import warp_perspective

    cfg = cfg if cfg is not None else ViewConfig()
    if not isinstance(image, Tensor) or not image.is_floating_point():
        raise TypeError("image must be a float tensor in [0, 1]")
    if image.dim() == 4:
        views = [synthetic_view(im, cfg, generator) for im in image]
        return SyntheticView(torch.stack([v.image for v in views]), torch.stack([v.homography for v in views]))
    if image.dim() != 3 or image.shape[0] != 3:
        raise UsageError(f"image must be (3, H, W) or (B, 3, H, W), got {tuple(image.shape)}")
    h, w = image.shape[-2:]
    hom = sample_homography(h, w, cfg, generator)
    warped = warp_perspective(
        image.unsqueeze(0).float(), hom.float().unsqueeze(0).to(image.device), (h, w),
        mode="bilinear", padding_mode="reflection", align_corners=True,
    )[0]
    return SyntheticView(_photometric(warped, cfg, generator).to(image.dtype), hom)


class SyntheticViews:
    """Callable holding a :class:`ViewConfig`: ``SyntheticViews(cfg)(image, generator)``."""

    def __init__(self, cfg: ViewConfig | None = None) -> None:
        self.cfg = cfg if cfg is not None else ViewConfig()

    def __call__(self, image: Tensor, generator: torch.Generator | None = None) -> SyntheticView:
        return synthetic_view(image, self.cfg, generator)

    def __repr__(self) -> str:
        return f"SyntheticViews({self.cfg})"
