"""The super-feature network: timm backbone -> LIT -> strength -> 1x1 reduction."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from .._image import ImageTooSmallError, display_name, load_image, open_image, too_small_message
from ..errors import UsageError
from ..matching import MatchRule, match
from ..types import LocalFeatures, Matches, SuperFeatures
from .backbone import create_backbone, freeze_batchnorm
from .config import MatchConfig, ModelConfig
from .lit_module import LIT

log = logging.getLogger(__name__)

ImageLike = Tensor | Image.Image | str | os.PathLike


def has_native_bf16(device: torch.device | str) -> bool:
    """Whether ``device`` computes bf16 natively: CUDA GPUs of compute capability 8.0 or
    more (Ampere and later). Older GPUs (V100, T4) only emulate it, slower than fp32."""
    device = torch.device(device)
    if device.type != "cuda":
        return False
    return torch.cuda.get_device_capability(device)[0] >= 8


@contextmanager
def fp32_reference(device: torch.device | str, allow_tf32: bool = False) -> Iterator[None]:
    """The float32 reference precision on ``device``: no TF32 in cuDNN convolutions and
    cuBLAS matmuls unless ``allow_tf32`` (PyTorch's default lets cuDNN use TF32, which
    rounds inputs to 10 mantissa bits on Ampere and later). The previous settings are
    restored on exit; nothing changes on the CPU."""
    if torch.device(device).type == "cpu" or allow_tf32:
        yield
        return
    conv, matmul = torch.backends.cudnn.conv, torch.backends.cuda.matmul
    before = conv.fp32_precision, matmul.fp32_precision
    conv.fp32_precision, matmul.fp32_precision = "ieee", "ieee"
    try:
        yield
    finally:
        conv.fp32_precision, matmul.fp32_precision = before


def strength(features: Tensor) -> Tensor:
    """L2 norm ``sqrt(sum x^2 + 1e-10)`` over the last axis.

    Shape:
        - Input: :math:`(..., D)`.
        - Output: :math:`(...)`.
    """
    return torch.sqrt(features.pow(2).sum(dim=-1) + 1e-10)


def attention_centroids(attention: Tensor | np.ndarray, image_size: tuple[int, int], *, check: bool = True) -> Tensor:
    """Centroid of each attention map, in pixel coordinates of an ``(H, W)`` image.

    The weighted mean of the cell centres, weights being the attention values. The centre
    of cell ``(i, j)`` of an ``h x w`` map laid over an ``H x W`` image is
    ``((j + 0.5) W / w, (i + 0.5) H / h)``; these are the ``positions`` of
    :class:`lit.types.LocalFeatures`. An all-zero map gives the image centre.

    Args:
        attention: non-negative attention maps (any device; the result stays there).
        image_size: ``(H, W)`` of the image the maps are laid over.
        check: validate the values (finite, non-negative); the model's own maps skip it.

    Returns:
        ``(x, y)`` per map, float32.

    Raises:
        UsageError: fewer than 2 dimensions, negative or non-finite weights, or a bad
            ``image_size``.

    Shape:
        - attention: :math:`(..., h, w)`.
        - Output: :math:`(..., 2)`.

    Example::

        xy = attention_centroids(sf.attention, image.shape[-2:])
    """
    a = torch.as_tensor(attention).detach().float()
    if a.ndim < 2:
        raise UsageError(f"attention must have shape (N, h, w), got {tuple(a.shape)}")
    if len(image_size) != 2 or min(image_size) <= 0:
        raise UsageError(f"image_size must be (H, W) with positive sides, got {tuple(image_size)}")
    if check and a.numel():
        if not bool(torch.isfinite(a).all()):
            raise UsageError("attention contains NaN or infinite values")
        if bool((a < 0).any()):
            raise UsageError("attention weights must be non-negative")
    H, W = (float(v) for v in image_size)
    h, w = a.shape[-2:]
    ys = (torch.arange(h, device=a.device, dtype=a.dtype) + 0.5) * (H / h)
    xs = (torch.arange(w, device=a.device, dtype=a.dtype) + 0.5) * (W / w)
    total = a.sum(dim=(-2, -1))
    x = (a.sum(dim=-2) * xs).sum(dim=-1) / total.clamp_min(1e-30)
    y = (a.sum(dim=-1) * ys).sum(dim=-1) / total.clamp_min(1e-30)
    x = torch.where(total > 0, x, torch.full_like(x, W / 2))
    y = torch.where(total > 0, y, torch.full_like(y, H / 2))
    return torch.stack([x, y], dim=-1)


def check_scales(scales: Sequence[float]) -> tuple[float, ...]:
    """Validate extraction scales: a non-empty sequence of positive finite numbers."""
    try:
        out = tuple(float(s) for s in scales)
    except (TypeError, ValueError):
        raise ValueError(f"scales must be a sequence of numbers, got {scales!r}") from None
    if not out or not all(math.isfinite(s) and s > 0 for s in out):
        raise ValueError(f"scales must be positive finite numbers (at least one), got {list(out)}")
    return out


def check_image_values(images: Tensor) -> None:
    """Refuse empty images and pixel values outside ``[0, 1]`` (NaN, infinities, 0..255).

    One reduction and one device-to-host transfer per batch.
    """
    if images.numel() == 0:
        raise ValueError(f"image tensor is empty (shape {tuple(images.shape)})")
    lo, hi = (float(v) for v in torch.aminmax(images.detach()))
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError("image tensor has NaN or infinite values")
    if hi > 1.0 + 1e-3 or lo < -1e-3:
        hint = " (values in 0..255? divide by 255)" if hi > 1.0 + 1e-3 else " (already normalised? give RGB in [0, 1])"
        raise ValueError(f"image tensor values must be in [0, 1], got {lo:.4g}..{hi:.4g}{hint}")


class SuperFeatureModel(nn.Module):
    """FIRe-style model producing super-features.

    Args:
        cfg: the model configuration (defaults: FIRe, ResNet-50 conv4, LIT 6/256/1024, 128-d).
        pretrained_backbone: initialise the backbone with ImageNet weights.

    Shape:
        - :meth:`forward_superfeatures`: normalised images :math:`(B, 3, H, W)` to
          super-features :math:`(B, N, D)` and attention :math:`(B, N, h, w)`.
        - :meth:`reduce`: :math:`(B, N, D)` to :math:`(B, N, d)` (``d = reduction_dim``).
        - ``match_background``: the background bank of the match rule, :math:`(M, d)`
          (``M = cfg.match.background_size``), a buffer saved with the weights; ``None``
          without a background test.

    Attributes:
        meta: free-form information of the checkpoint the model was loaded from (recipe,
            provenance of the background bank, ...); written back by ``save_checkpoint``.
    """

    def __init__(self, cfg: ModelConfig = ModelConfig(), pretrained_backbone: bool = False) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = create_backbone(cfg.backbone, pretrained=pretrained_backbone)
        self.lit = LIT(self.backbone.out_channels, cfg.lit)
        if cfg.reduction_dim is not None:
            self.dim_reduction = nn.Conv2d(cfg.lit.dim, cfg.reduction_dim, kernel_size=1)
        else:
            self.dim_reduction = None
        self.register_buffer("mean", torch.tensor(cfg.runtime.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg.runtime.std).view(1, 3, 1, 1), persistent=False)
        m = cfg.match.background_size
        self.register_buffer("match_background", torch.zeros(m, cfg.descriptor_dim) if m else None)
        self.meta: dict = {}
        self.eval()

    # ------------------------------------------------------------------ modes
    def train(self, mode: bool = True) -> SuperFeatureModel:
        """Like ``nn.Module.train`` but batch norm always stays in eval mode."""
        super().train(mode)
        freeze_batchnorm(self)
        return self

    @property
    def device(self) -> torch.device:
        return self.lit.templates_init.device

    @property
    def has_reduction(self) -> bool:
        return self.dim_reduction is not None

    # ------------------------------------------------------------------ core
    def min_image_size(self, scales: Sequence[float] | None = None) -> int:
        """Smallest image side (pixels) this model extracts from: one cell of the feature
        map (``backbone.reduction`` pixels, 16 for FIRe) at the largest scale.

        Smaller sides are refused by :meth:`extract` (:class:`~lit.ImageTooSmallError`);
        for larger images, scales at which a side would be under one cell are skipped.
        """
        scales = check_scales(self.cfg.runtime.scales if scales is None else scales)
        return math.ceil(self.backbone.reduction / max(scales))

    def usable_scales(self, height: int, width: int, scales: Sequence[float] | None = None) -> tuple[float, ...]:
        """The scales at which an ``height x width`` image gives at least one feature-map
        cell on each side (``floor(side * s) >= backbone.reduction``), in the given order.

        Raises:
            ImageTooSmallError: none of them does.
        """
        scales = check_scales(self.cfg.runtime.scales if scales is None else scales)
        r = self.backbone.reduction
        out = tuple(s for s in scales if math.floor(height * s) >= r and math.floor(width * s) >= r)
        if not out:
            raise ImageTooSmallError(
                f"too small ({width}x{height} pixels): this model needs each side >= "
                f"{self.min_image_size(scales)} px (one {r}-px feature-map cell at scale {max(scales):g})"
            )
        return out

    def normalize(self, images: Tensor) -> Tensor:
        """Subtract the mean and divide by the std of the runtime config."""
        return (images - self.mean) / self.std

    def forward_superfeatures(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Backbone and LIT on normalised images; returns ``(features, attention)``."""
        return self.lit(self.backbone(x))

    def reduce(self, features: Tensor) -> Tensor:
        """Apply the 1x1 reduction (an affine map, no L2 normalisation after it)."""
        if self.dim_reduction is None:
            raise RuntimeError(
                "this model has no dimensionality reduction layer (e.g. the ImageNet "
                "pre-training checkpoint fire_imagenet.pth): initialise it first with "
                "model.init_reduction(descriptors) or lit.models.init_reduction_from_images(...)"
            )
        w = self.dim_reduction.weight.flatten(1)
        return F.linear(features, w, self.dim_reduction.bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Normalised images to reduced descriptors, strengths and attention, one scale.

        Shape:
            - Input: :math:`(B, 3, H, W)` normalised.
            - Output: descriptors :math:`(B, N, d)`, strengths :math:`(B, N)`,
              attention :math:`(B, N, h, w)`.
        """
        feats, attn = self.forward_superfeatures(x)
        return self.reduce(feats), strength(feats), attn

    def init_reduction(self, features: Tensor, shrinkage: float = 1.0, dim: int | None = None) -> None:
        """Initialise (and create if missing) the reduction by PCA-whitening ``features``.

        Args:
            features: :math:`(M, D)` super-features (before reduction) of training images.
            shrinkage: eigenvalue power ``-shrinkage/2`` (1: full whitening, 0: plain PCA).
            dim: output dimension when the model has no reduction yet (default 128, or
                ``D`` when ``D < 128``).
        """
        from .whitening import pca_whitening

        dim = self.cfg.reduction_dim or dim or min(128, self.cfg.lit.dim)
        weight, bias = pca_whitening(features, dim=dim, shrinkage=shrinkage)
        if self.match_background is not None:  # the bank lives in the space being replaced
            log.warning("the reduction is initialised anew: the match rule's background bank (%d super-features "
                        "of the old descriptor space) is dropped, the rule is FIRe's cosine >= %g",
                        len(self.match_background), MatchConfig().threshold)
            self.set_match_rule(MatchRule())
        if self.dim_reduction is None:
            self.dim_reduction = nn.Conv2d(self.cfg.lit.dim, dim, kernel_size=1).to(self.device)
            self.cfg = replace(self.cfg, reduction_dim=dim)
        with torch.no_grad():
            self.dim_reduction.weight.copy_(weight.view(dim, -1, 1, 1))
            self.dim_reduction.bias.copy_(bias)
        self.dim_reduction.requires_grad_(False)

    # ------------------------------------------------------------------ public API
    def _as_batch(self, image: ImageLike | Sequence[ImageLike]) -> tuple[Tensor, bool]:
        if isinstance(image, Tensor):
            if image.dim() == 3:
                batch, single = image.unsqueeze(0), True
            elif image.dim() == 4:
                batch, single = image, False
            else:
                raise ValueError(f"image tensor must be (3, H, W) or (B, 3, H, W), got {tuple(image.shape)}")
            if batch.shape[1] != 3:
                raise ValueError(f"image tensor must have 3 (RGB) channels, got {batch.shape[1]}")
            if not batch.is_floating_point():
                raise TypeError(f"image tensor must be float in [0, 1], got {batch.dtype}")
        elif isinstance(image, (Image.Image, str, os.PathLike)):
            batch, single = load_image(image, self.cfg.runtime.image_size).unsqueeze(0), True
        else:
            raise TypeError(
                f"image must be a tensor, a PIL image or a path, got {type(image).__name__}"
            )
        return batch.to(self.device, torch.float32), single

    @torch.inference_mode()
    def extract_batch(
        self, images: Tensor, scales: Sequence[float] | None = None, features_num: int | None = None,
        amp: torch.dtype | None = None,
    ) -> list[LocalFeatures]:
        """Multi-scale super-features of a batch of equal-size images (SPEC section 1).

        Args:
            images: RGB in ``[0, 1]``, not normalised, used as given.
            scales: resize factors (default: the runtime config's 7 scales).
            features_num: how many of the strongest super-features to keep (default 1000).
            amp: run backbone and LIT under autocast with this dtype (``torch.bfloat16``:
                the fast path); strengths, reduction and selection stay in float32.
                ``None`` (default) is the float32 reference path.

        Shape:
            - Input: :math:`(B, 3, H, W)`.
            - Output: ``B`` :class:`~lit.LocalFeatures` with ``K = min(features_num, S N)``.
        """
        k = self.cfg.runtime.features_num if features_num is None else int(features_num)
        if k < 1:
            raise ValueError(f"features_num must be >= 1, got {k}")
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
        check_image_values(images)
        # scales at which a side would be under one feature-map cell are skipped
        scales = self.usable_scales(images.shape[-2], images.shape[-1], scales)
        x = self.normalize(images)
        h0, w0 = x.shape[-2:]
        descs, strengths, scale_ids, positions = [], [], [], []
        with self._precision(x.device, amp):
            for s in scales:
                xs = x if s == 1.0 else F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False)
                if self._channels_last or xs.device.type == "cpu":
                    # on CPU a channels-last input alone makes oneDNN's convolutions about 1.4x
                    # faster (ResNet-50, 1024x768, 7 scales: 11.1 -> 8.0 s); same features to 1e-5
                    xs = xs.contiguous(memory_format=torch.channels_last)
                if amp is None:
                    feats, attn = self.forward_superfeatures(xs)
                else:
                    with torch.autocast(device_type=xs.device.type, dtype=amp):
                        feats, attn = self.forward_superfeatures(xs)
                    feats, attn = feats.float(), attn.float()
                descs.append(self.reduce(feats))
                strengths.append(strength(feats))
                scale_ids.append(torch.full(strengths[-1].shape, float(s), device=x.device))
                positions.append(attention_centroids(attn, (h0, w0), check=False))
        descs = torch.cat(descs, dim=1)  # (B, S*N, d)
        strengths = torch.cat(strengths, dim=1)
        scale_ids = torch.cat(scale_ids, dim=1)
        positions = torch.cat(positions, dim=1)
        n = self.cfg.lit.N
        sf_ids = torch.arange(n, device=x.device).repeat(len(scales)).expand(x.shape[0], -1)
        k = min(k, strengths.shape[1])
        order = torch.sort(strengths, dim=1, descending=True, stable=True).indices[:, :k]
        # gather on the device, then one transfer for the whole batch
        def take(t: Tensor) -> Tensor:
            idx = order.view(*order.shape, *([1] * (t.dim() - 2))).expand(-1, -1, *t.shape[2:])
            return t.gather(1, idx)

        packed = torch.cat(
            [take(descs), take(strengths)[..., None], take(scale_ids)[..., None],
             take(sf_ids.float())[..., None], take(positions)], dim=2,
        ).float().cpu()
        d = descs.shape[2]
        return [
            LocalFeatures(
                descriptors=p[:, :d].contiguous(),
                strengths=p[:, d].contiguous(),
                scales=p[:, d + 1].contiguous(),
                superfeature_ids=p[:, d + 2].long(),
                positions=p[:, d + 3:].contiguous(),
            )
            for p in packed
        ]

    _channels_last = False

    allow_tf32 = False
    """Let the float32 reference path use TF32 on GPUs (faster, about 1e-3 relative error).
    Default False: true float32 (:func:`fp32_reference`). Set it per model:
    ``model.allow_tf32 = True``."""

    def _precision(self, device: torch.device, amp: torch.dtype | None):
        return fp32_reference(device, self.allow_tf32) if amp is None else nullcontext()

    def to_channels_last(self) -> SuperFeatureModel:
        """Use the channels-last memory format for the backbone (faster convolutions on GPU)."""
        self.backbone.to(memory_format=torch.channels_last)
        self._channels_last = True
        return self

    def extract(
        self,
        image: ImageLike,
        scales: Sequence[float] | None = None,
        features_num: int | None = None,
        amp: torch.dtype | None = None,
    ) -> LocalFeatures | list[LocalFeatures]:
        """Multi-scale super-features of one image (SPEC sections 1 and 8).

        Args:
            image: float tensor ``(3, H, W)`` in ``[0, 1]`` (used as given; NaN, infinite
                or 0..255 values are refused), a batch ``(B, 3, H, W)`` (returns a list), a
                PIL image or a path (downscaled so that the longer side is at most
                ``runtime.image_size``). Each side must be at least
                :meth:`min_image_size` pixels.
            scales: default the model's scales (FIRe: 7); positive. Scales at which the
                image would be under one feature-map cell are skipped.
            features_num: default the model's (FIRe: 1000).
            amp: autocast dtype for the fast path (see :meth:`extract_batch`).

        Returns:
            :class:`~lit.LocalFeatures`, strongest first (a list for a batch). The
            descriptors are the reduction layer's output, **not L2-normalised** (as in
            FIRe); :func:`lit.match` and ASMK normalise where the method needs it.

        Raises:
            ImageTooSmallError: a side is under :meth:`min_image_size`.
            ValueError: bad scales or pixel values.
        """
        batch, single = self._as_batch(image)
        try:
            feats = self.extract_batch(batch, scales=scales, features_num=features_num, amp=amp)
        except ImageTooSmallError as err:
            size = self.cfg.runtime.image_size
            if isinstance(image, Image.Image):  # its own size, not the resized one
                raise ImageTooSmallError(too_small_message(err, image.size, batch, size)) from None
            if isinstance(image, (str, os.PathLike)):  # the file named, with its own size
                own = open_image(image, size).size
                raise ImageTooSmallError(f"{display_name(image)}: {too_small_message(err, own, batch, size)}") from None
            raise
        return feats[0] if single else feats

    @torch.inference_mode()
    def superfeatures(self, image: ImageLike, scale: float = 1.0) -> SuperFeatures:
        """All ``N`` super-features of one image at one scale, with their attention maps."""
        batch, single = self._as_batch(image)
        if not single and batch.shape[0] != 1:
            raise ValueError("superfeatures takes one image; use forward() for batches")
        check_image_values(batch)
        self.usable_scales(batch.shape[-2], batch.shape[-1], (scale,))
        x = self.normalize(batch)
        if scale != 1.0:
            x = F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)
        with self._precision(x.device, None):
            desc, strengths, attn = self(x)
        return SuperFeatures(desc[0].float().cpu(), strengths[0].float().cpu(), attn[0].float().cpu(), float(scale))

    @torch.inference_mode()
    def forward_global(self, images: Tensor, scales: Sequence[float] | None = None) -> Tensor:
        """Global descriptor: sum over scales and super-features of strength x descriptor,
        L2-normalised.

        Shape:
            - Input: :math:`(B, 3, H, W)` RGB in ``[0, 1]``.
            - Output: :math:`(B, d)`.
        """
        scales = tuple(self.cfg.runtime.scales if scales is None else scales)
        x = self.normalize(images.to(self.device, torch.float32))
        total = 0.0
        with self._precision(x.device, None):
            for s in scales:
                xs = x if s == 1.0 else F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False)
                desc, strengths, _ = self(xs)
                total = total + (strengths.unsqueeze(-1) * desc).sum(dim=1)
        return F.normalize(total, dim=-1)

    # ------------------------------------------------------------------ match rule
    def match_rule(self, threshold: float | None | str = "model", margin: float | None | str = "model") -> MatchRule:
        """The model's match rule (``cfg.match`` and its background bank), with ``threshold``
        / ``margin`` replacing its parts when not ``"model"``.

        FIRe's models have FIRe's cosine >= 0.9; a model trained by lit has the rule
        calibrated on its training photos (lit-effl0: the background test, no cosine
        floor; its model card). ``threshold=None`` sets no cosine floor; ``margin=None``
        drops the background test.

        Raises:
            UsageError: a string other than ``"model"``, or a margin for a model without
                background bank.
        """
        for name, value in (("threshold", threshold), ("margin", margin)):
            if isinstance(value, str) and value != "model":
                raise UsageError(f"{name} must be a number, None or 'model', got {value!r}")
        own = self.cfg.match
        thr = own.threshold if isinstance(threshold, str) else threshold
        mg = own.margin if isinstance(margin, str) else margin
        if mg is not None and self.match_background is None:
            raise UsageError("this model has no match background: a margin needs one (margin=None)")
        return MatchRule(threshold=None if thr is None else float(thr), margin=None if mg is None else float(mg),
                         background=None if mg is None else self.match_background)

    def set_match_rule(self, rule: MatchRule) -> None:
        """Make ``rule`` the model's own: ``cfg.match`` and the background bank (stored in
        the model's dtype and device; saved with the weights from now on)."""
        bg = rule.background
        self.cfg = replace(self.cfg, match=MatchConfig(rule.threshold, rule.margin, 0 if bg is None else int(bg.shape[0])))
        if bg is not None:
            if bg.ndim != 2 or bg.shape[1] != self.cfg.descriptor_dim:
                raise UsageError(f"background bank must be M x {self.cfg.descriptor_dim}, got {tuple(bg.shape)}")
            bg = bg.detach().to(self.device, torch.float32).clone()
        self.match_background = bg

    def match(
        self, image_a: ImageLike, image_b: ImageLike, threshold: float | None | str = "model",
        ratio: float | None = None, margin: float | None | str = "model", **extract_kwargs,
    ) -> tuple[LocalFeatures, LocalFeatures, Matches]:
        """Extract both images and match their super-features (:func:`lit.match`).

        ``threshold="model"`` and ``margin="model"`` (defaults) use the model's rule
        (:meth:`match_rule`); ``threshold=None`` sets no cosine floor,
        ``margin=None`` drops the background test."""
        rule = self.match_rule(threshold, margin)
        fa = self.extract(image_a, **extract_kwargs)
        fb = self.extract(image_b, **extract_kwargs)
        return fa, fb, match(fa, fb, ratio=ratio, **rule.kwargs())
