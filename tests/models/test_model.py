"""The super-feature model: multi-scale extraction semantics (SPEC section 1)."""

import math

import pytest
import torch
import torch.nn.functional as F

from lit._image import (
    ImageTooSmallError,
)
from lit.models import SuperFeatureModel, attention_centroids, pca_whitening


def reference_extract(model, image, scales, k):
    """Independent multi-scale extraction: conv 1x1 reduction, explicit pooling."""
    mean = torch.tensor(model.cfg.runtime.mean).view(1, 3, 1, 1)
    std = torch.tensor(model.cfg.runtime.std).view(1, 3, 1, 1)
    x = (image.unsqueeze(0) - mean) / std
    rows = []
    with torch.no_grad():
        for s in scales:
            xs = F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False) if s != 1 else x
            fmap = model.backbone(xs)
            feats, _ = model.lit(fmap)  # (1, N, D)
            stren = torch.sqrt((feats[0] ** 2).sum(-1) + 1e-10)
            red = F.conv2d(feats.permute(0, 2, 1).unsqueeze(-1), model.dim_reduction.weight, model.dim_reduction.bias)
            red = red[0, :, :, 0].T  # (N, d)
            for n in range(feats.shape[1]):
                rows.append((float(stren[n]), s, n, red[n]))
    rows.sort(key=lambda r: -r[0])
    rows = rows[:k]
    return (
        torch.stack([r[3] for r in rows]),
        torch.tensor([r[0] for r in rows]),
        torch.tensor([r[1] for r in rows]),
        torch.tensor([r[2] for r in rows]),
    )


def test_extract_matches_reference(tiny_model):
    torch.manual_seed(0)
    image = torch.rand(3, 83, 101)  # odd sizes: floor(H*s) and the scale-factor grid matter
    scales = (2.0, 1.414, 1.0, 0.707, 0.5)
    feats = tiny_model.extract(image, scales=scales, features_num=25)
    desc, stren, sc, ids = reference_extract(tiny_model, image, scales, 25)
    assert feats.descriptors.shape == (25, 16) and feats.descriptors.dtype == torch.float32
    torch.testing.assert_close(feats.strengths, stren, rtol=1e-5, atol=0)
    torch.testing.assert_close(feats.descriptors, desc, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(feats.scales, sc.float())
    assert torch.equal(feats.superfeature_ids, ids.long())
    assert bool((feats.strengths[:-1] >= feats.strengths[1:]).all())


def test_scale_factor_grid_differs_from_explicit_size(tiny_model):
    """SPEC: resizing to an explicit floor(H*s) size is a different computation."""
    x = torch.rand(1, 3, 83, 101)
    a = F.interpolate(x, scale_factor=0.707, mode="bilinear", align_corners=False)
    b = F.interpolate(x, size=(math.floor(83 * 0.707), math.floor(101 * 0.707)), mode="bilinear", align_corners=False)
    assert a.shape == b.shape and (a - b).abs().max() > 1e-3


def test_defaults_and_topk(tiny_model):
    image = torch.rand(3, 64, 80)
    feats = tiny_model.extract(image)
    assert len(feats) == tiny_model.cfg.runtime.features_num == 20
    assert set(feats.scales.tolist()) <= set(torch.tensor(tiny_model.cfg.runtime.scales).tolist())
    everything = tiny_model.extract(image, features_num=10_000)
    assert len(everything) == 3 * 8  # all N super-features of all scales
    torch.testing.assert_close(everything.strengths[:20], feats.strengths)


def test_batch_equals_single_images(tiny_model):
    images = torch.rand(3, 3, 64, 64)
    batch = tiny_model.extract(images)
    assert isinstance(batch, list) and len(batch) == 3
    for i in range(3):
        single = tiny_model.extract(images[i])
        torch.testing.assert_close(batch[i].descriptors, single.descriptors, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(batch[i].strengths, single.strengths, rtol=1e-5, atol=1e-6)


def test_superfeatures_one_scale(tiny_model):
    image = torch.rand(3, 64, 96)
    sf = tiny_model.superfeatures(image, scale=1.0)
    assert sf.descriptors.shape == (8, 16) and sf.strengths.shape == (8,)
    assert sf.attention.shape == (8, 4, 6)  # stride 16
    torch.testing.assert_close(sf.attention.sum(dim=(1, 2)), torch.ones(8))
    multi = tiny_model.extract(image, scales=[1.0], features_num=8)
    torch.testing.assert_close(multi.strengths, sf.strengths.sort(descending=True).values)
    half = tiny_model.superfeatures(image, scale=0.5)
    assert half.attention.shape == (8, 2, 3) and half.scale == 0.5


def test_batchnorm_stays_frozen_in_train_mode(tiny_model):
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = tiny_model(x)[0]
        tiny_model.train()
        assert all(not m.training for m in tiny_model.modules() if isinstance(m, torch.nn.BatchNorm2d))
        assert tiny_model.lit.training
        out = tiny_model(x)[0]
    torch.testing.assert_close(out, ref)


def test_positions_are_attention_centroids(tiny_model):
    image = torch.rand(3, 64, 96)
    feats = tiny_model.extract(image, scales=[1.0], features_num=8)
    sf = tiny_model.superfeatures(image)
    cent = attention_centroids(sf.attention, (64, 96))
    torch.testing.assert_close(feats.positions, cent[feats.superfeature_ids], rtol=1e-5, atol=1e-4)
    assert bool((feats.positions[:, 0] >= 0).all() and (feats.positions[:, 0] <= 96).all())
    onehot = torch.zeros(1, 4, 6)
    onehot[0, 1, 2] = 1.0
    torch.testing.assert_close(attention_centroids(onehot, (64, 96)), torch.tensor([[2.5 * 16, 1.5 * 16]]))


def test_global_descriptor_is_weighted_sum(tiny_model):
    images = torch.rand(2, 3, 64, 64)
    g = tiny_model.forward_global(images, scales=[1.0, 0.5])
    assert g.shape == (2, 16)
    torch.testing.assert_close(g.norm(dim=1), torch.ones(2))
    with torch.no_grad():
        total = 0
        for s in (1.0, 0.5):
            sf = tiny_model.superfeatures(images[0], scale=s)
            total = total + (sf.strengths[:, None] * sf.descriptors).sum(0)
    torch.testing.assert_close(g[0], total / total.norm(), rtol=1e-4, atol=1e-5)


def test_input_validation(tiny_model):
    with pytest.raises(ValueError, match="3 \\(RGB\\) channels"):
        tiny_model.extract(torch.rand(1, 64, 64))
    with pytest.raises(TypeError, match="float"):
        tiny_model.extract(torch.zeros(3, 64, 64, dtype=torch.uint8))
    with pytest.raises(TypeError, match="PIL image or a path"):
        tiny_model.extract(123)
    with pytest.raises(ValueError, match="no such file"):
        tiny_model.extract("/nonexistent/image.jpg")


def test_pca_whitening_whitens_and_initialises_reduction(tiny_model):
    torch.manual_seed(0)
    mix = torch.randn(32, 32)
    feats = torch.randn(2000, 32) @ mix + 3.0
    w, b = pca_whitening(feats, dim=16, shrinkage=1.0)
    y = feats @ w.T + b
    torch.testing.assert_close(y.mean(0), torch.zeros(16), atol=1e-3, rtol=0)
    torch.testing.assert_close(torch.cov(y.T), torch.eye(16), atol=2e-3, rtol=0)
    w0, _ = pca_whitening(feats, dim=16, shrinkage=0.0)  # plain PCA: orthonormal rows
    torch.testing.assert_close(w0 @ w0.T, torch.eye(16), atol=1e-5, rtol=0)
    tiny_model.init_reduction(feats, shrinkage=1.0)
    assert not tiny_model.dim_reduction.weight.requires_grad
    torch.testing.assert_close(tiny_model.reduce(feats[:5]), y[:5], rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="at least 2"):
        pca_whitening(feats[:1], dim=16)


def test_model_without_reduction_says_how_to_fix(tiny_cfg):
    from dataclasses import replace

    model = SuperFeatureModel(replace(tiny_cfg, reduction_dim=None))
    with pytest.raises(RuntimeError, match="init_reduction"):
        model.extract(torch.rand(3, 64, 64))
    model.init_reduction(torch.randn(100, 32))
    assert model.extract(torch.rand(3, 64, 64)).descriptors.shape[1] == 32
    model = SuperFeatureModel(replace(tiny_cfg, reduction_dim=None))
    model.init_reduction(torch.randn(100, 32), dim=8)
    assert model.extract(torch.rand(3, 64, 64)).descriptors.shape[1] == 8 and model.cfg.reduction_dim == 8


def test_bf16_fast_path_agrees_with_fp32(tiny_model):
    torch.manual_seed(0)
    image = torch.rand(3, 96, 128)
    ref = tiny_model.extract(image, features_num=12)
    fast = tiny_model.extract(image, features_num=12, amp=torch.bfloat16)
    assert fast.descriptors.dtype == torch.float32
    same = {(float(s), int(i)) for s, i in zip(ref.scales, ref.superfeature_ids)} & {
        (float(s), int(i)) for s, i in zip(fast.scales, fast.superfeature_ids)}
    assert len(same) >= 9  # bf16 may swap near-ties at the cut, not much more
    torch.testing.assert_close(fast.strengths, ref.strengths, rtol=5e-2, atol=0)


def test_channels_last_gives_the_same_features(tiny_model):
    image = torch.rand(3, 64, 80)
    ref = tiny_model.extract(image)
    tiny_model.to_channels_last()
    torch.testing.assert_close(tiny_model.extract(image).descriptors, ref.descriptors, rtol=1e-4, atol=1e-5)


def test_minimum_image_size_and_scales(tiny_model):
    assert tiny_model.min_image_size() == 16  # one 16-px cell at the largest scale, 1.0
    with pytest.raises(ImageTooSmallError, match="too small"):
        tiny_model.extract(torch.rand(3, 2, 2))
    # 20 px: under one cell at 0.707 and 0.5, so only scale 1 is used
    feats = tiny_model.extract(torch.rand(3, 20, 40))
    assert set(feats.scales.tolist()) == {1.0}
    assert tiny_model.usable_scales(40, 40) == (1.0, 0.707, 0.5) and tiny_model.usable_scales(20, 40) == (1.0,)
    for bad in ([0], [-1.0], [], [float("nan")]):
        with pytest.raises(ValueError, match="scales"):
            tiny_model.extract(torch.rand(3, 64, 64), scales=bad)
    with pytest.raises(ValueError, match="empty"):
        tiny_model.extract(torch.rand(3, 0, 0))
    with pytest.raises(ValueError, match="scales"):
        tiny_model.superfeatures(torch.rand(3, 64, 64), scale=0.0)


def test_a_thin_photo_is_called_too_small_with_its_own_size(tiny_model, tmp_path):
    from PIL import Image

    size = tiny_model.cfg.runtime.image_size
    thin = Image.new("RGB", (5000, 5), (90, 120, 150))
    thin.save(tmp_path / "thin.png")
    resized = f"{size}x1 after the resize to at most {size} px"
    with pytest.raises(ImageTooSmallError) as err:
        tiny_model.extract(tmp_path / "thin.png")
    assert str(err.value).startswith(f"{tmp_path / 'thin.png'}: too small (5000x5 pixels, {resized})")
    with pytest.raises(ImageTooSmallError) as err:
        tiny_model.extract(thin)
    assert str(err.value).startswith(f"too small (5000x5 pixels, {resized})")


def test_image_tensor_values_are_checked(tiny_model):
    with pytest.raises(ValueError, match=r"0\.\.255\? divide by 255"):
        tiny_model.extract(torch.rand(3, 32, 32) * 255)
    x = torch.rand(3, 32, 32)
    x[0, 3, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        tiny_model.extract(x)
    with pytest.raises(ValueError, match="normalised"):
        tiny_model.extract(torch.rand(3, 32, 32) - 0.5)
