"""lit.train.views: synthetic views, their homographies and night views."""

from __future__ import annotations

import pytest
import torch

from lit.train import (
    ViewConfig,
    sample_homography,
    synthetic_view,
)


# ---------------------------------------------------------------------- views
def test_synthetic_view_is_a_valid_seeded_image_with_a_real_homography():
    img = torch.rand(3, 40, 56, generator=torch.Generator().manual_seed(0))
    v1 = synthetic_view(img, generator=torch.Generator().manual_seed(3))
    v2 = synthetic_view(img, generator=torch.Generator().manual_seed(3))
    v3 = synthetic_view(img, generator=torch.Generator().manual_seed(4))
    assert v1.image.shape == img.shape and v1.image.dtype == img.dtype
    assert torch.isfinite(v1.image).all() and v1.image.min() >= 0 and v1.image.max() <= 1
    assert torch.equal(v1.image, v2.image) and torch.equal(v1.homography, v2.homography)
    assert not torch.allclose(v1.image, v3.image)
    assert float((v1.homography - torch.eye(3, dtype=torch.float64)).abs().max()) > 1e-2
    batch = synthetic_view(img.expand(2, -1, -1, -1).clone(), generator=torch.Generator().manual_seed(3))
    assert batch.image.shape == (2, 3, 40, 56) and batch.homography.shape == (2, 3, 3)


def test_synthetic_view_homography_maps_image_points_onto_the_view():
    cfg = ViewConfig(brightness=0, contrast=0, saturation=0, hue=0, blur_probability=0)
    for seed in range(4):
        h = sample_homography(60, 80, cfg, torch.Generator().manual_seed(seed))
        # pick an image point that lands well inside the view
        for x, y in [(40, 30), (30, 25), (50, 35), (20, 20), (60, 40)]:
            p = h @ torch.tensor([x, y, 1.0], dtype=torch.float64)
            vx, vy = float(p[0] / p[2]), float(p[1] / p[2])
            if 3 < vx < 76 and 3 < vy < 56:
                break
        img = torch.zeros(3, 60, 80)
        img[:, y - 1:y + 2, x - 1:x + 2] = 1.0
        view = synthetic_view(img, cfg, torch.Generator().manual_seed(seed))
        assert torch.allclose(view.homography, h)
        m = view.image[0]
        yy, xx = torch.meshgrid(torch.arange(60.0), torch.arange(80.0), indexing="ij")
        cx, cy = float((m * xx).sum() / m.sum()), float((m * yy).sum() / m.sum())
        assert abs(cx - vx) < 1.0 and abs(cy - vy) < 1.0


def test_view_config_rejects_bad_ranges():
    with pytest.raises(ValueError, match="scale"):
        ViewConfig(scale=(0.5, 1.5))
    with pytest.raises(ValueError, match="night_probability"):
        ViewConfig(night_probability=2.0)
    with pytest.raises(ValueError, match="night_gamma"):
        ViewConfig(night_gamma=(2.0, 1.0))


def test_night_views_darken_by_their_gamma_and_leave_old_views_unchanged():
    img = torch.rand(3, 40, 56, generator=torch.Generator().manual_seed(0))
    still = dict(rotation=0, perspective=0, scale=(1.0, 1.0), brightness=0, contrast=0, saturation=0, hue=0,
                 blur_probability=0)
    day = synthetic_view(img, ViewConfig(**still), torch.Generator().manual_seed(1)).image
    night_cfg = ViewConfig(**still, night_probability=1.0, night_gamma=(2.0, 2.0), night_cast=0.0, night_noise=0.0)
    night = synthetic_view(img, night_cfg, torch.Generator().manual_seed(1)).image
    assert torch.allclose(night, day.pow(2.0), atol=1e-6)  # identity geometry: exactly the gamma curve
    cast = ViewConfig(**still, night_probability=1.0, night_gamma=(1.0, 1.0), night_cast=0.3, night_noise=0.0)
    tinted = synthetic_view(img, cast, torch.Generator().manual_seed(1)).image
    gains = (tinted / day.clamp_min(1e-3))[:, day.amax(0) < 0.7].median(dim=1).values
    assert ((gains > 0.69) & (gains < 1.31)).all() and gains.std() > 1e-3  # one gain per channel
    # night_probability = 0 draws nothing more: the default views are those of before
    base = ViewConfig()
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(synthetic_view(img, base, g1).image, synthetic_view(img, ViewConfig(night_gamma=(1.1, 1.2)), g2).image)
    assert torch.equal(g1.get_state(), g2.get_state())
