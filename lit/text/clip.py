"""Pluggable CLIP towers through ``open_clip`` (optional): ``open_clip:ARCH:TAG``.

``TAG`` is an open_clip pretrained tag (``openai``, ``laion2b_s34b_b79k``, ...; open_clip
downloads it once, so this needs a network the first time) or ``none`` for random weights
(no download: what lit's tests use to check the plumbing). Image and text tower come from
the same CLIP model; the joint space is CLIP's (L2-normalised embeddings).
"""

from __future__ import annotations

import importlib

import torch
import torch.nn.functional as F

from ..errors import UsageError, missing_dependency
from .base import BaseTextModel


def _open_clip():
    try:
        return importlib.import_module("open_clip")
    except ImportError:
        raise missing_dependency("an open_clip text model", "open_clip_torch", "clip") from None


def parse_name(name: str) -> tuple[str, str | None]:
    """``open_clip:ARCH:TAG`` -> ``(ARCH, TAG or None for 'none')``."""
    parts = name.split(":")
    if len(parts) != 3 or parts[0] != "open_clip" or not parts[1] or not parts[2]:
        raise UsageError(f"{name!r}: an open_clip text model is named open_clip:ARCH:TAG (TAG 'none' for random weights)")
    return parts[1], None if parts[2] == "none" else parts[2]


class ClipImageTower(torch.nn.Module):
    """CLIP's image tower: photo -> unit-norm embedding (resize shorter side, centre crop).

    Shape:
        - :meth:`embed` input: a list of float images :math:`(3, H, W)` in [0, 1].
        - output: :math:`(B, D)`.
    """

    def __init__(self, model, name: str) -> None:
        super().__init__()
        self.model, self.name = model, name.replace("/", "_")
        cfg = getattr(model.visual, "preprocess_cfg", {}) or {}
        size = model.visual.image_size
        self.size = size if isinstance(size, tuple) else (size, size)
        self.register_buffer("mean", torch.tensor(cfg.get("mean", (0.48145466, 0.4578275, 0.40821073))).view(3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg.get("std", (0.26862954, 0.26130258, 0.27577711))).view(3, 1, 1), persistent=False)

    @property
    def device(self) -> torch.device:
        return self.mean.device

    def prepare(self, image: torch.Tensor) -> torch.Tensor:
        h, w = image.shape[-2:]
        s = max(self.size[0] / h, self.size[1] / w)
        x = F.interpolate(image[None].float(), size=(max(self.size[0], round(h * s)), max(self.size[1], round(w * s))),
                          mode="bicubic", align_corners=False, antialias=s < 1)[0].clamp(0, 1)
        top, left = (x.shape[1] - self.size[0]) // 2, (x.shape[2] - self.size[1]) // 2
        x = x[:, top:top + self.size[0], left:left + self.size[1]]
        return (x - self.mean) / self.std

    @torch.no_grad()
    def embed(self, images) -> torch.Tensor:
        if not len(images):
            return torch.zeros(0, self.model.visual.output_dim, device=self.device)
        x = torch.stack([self.prepare(img.to(self.device)) for img in images])
        return F.normalize(self.model.encode_image(x), dim=-1)


class ClipTextModel(BaseTextModel):
    """A CLIP model's text tower with its image tower (:class:`~lit.text.base.BaseTextModel`)."""

    english_only = False  # CLIP's notes: only truncation (its BPE covers any script)

    def __init__(self, model, tokenizer, name: str) -> None:
        self.clip, self.tokenizer, self.name = model, tokenizer, name
        self.image_tower = ClipImageTower(model, name)
        self.head = None

    @property
    def max_tokens(self) -> int:
        return int(getattr(self.tokenizer, "context_length", 77))

    @torch.no_grad()
    def encode(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        dev = self.image_tower.device
        truncated = torch.tensor([len(self.tokenizer.encode(t)) + 2 > self.max_tokens for t in texts]) \
            if hasattr(self.tokenizer, "encode") else torch.zeros(len(texts), dtype=torch.bool)
        tokens = self.tokenizer(texts).to(dev)
        return F.normalize(self.clip.encode_text(tokens), dim=-1), truncated

    @torch.no_grad()
    def image_space(self, embeddings: torch.Tensor) -> torch.Tensor:
        return F.normalize(embeddings.float(), dim=-1)


def load_open_clip(name: str, device: str | torch.device = "cpu") -> ClipTextModel:
    """Load ``open_clip:ARCH:TAG`` (see the module docstring)."""
    arch, tag = parse_name(name)
    oc = _open_clip()
    model = oc.create_model(arch, pretrained=tag)
    return ClipTextModel(model.to(device).eval(), oc.get_tokenizer(arch), name)
