"""The text model trained by lit: all-MiniLM-L6-v2 + a head, into an image tower's space;
and the head file, which this module owns.

Head file (``.safetensors``, what lit ships; ``.pt`` files written by earlier versions
still load, with ``torch.load(weights_only=True)``): the head's learned tensors (class keys
in float16; a linear head's prototypes are not stored, they come from the tower) and, in
the metadata, ``format`` = ``"lit-text-head"``, ``version`` ``1``, ``config`` (JSON of
:class:`~lit.text.head.HeadConfig`), ``tower`` (the image tower's registry name),
``encoder`` and ``extra`` (JSON: the recipe).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import torch.nn.functional as F

from .._fileio import atomic_path, file_sha256
from ..errors import CheckpointError, UsageError
from .base import BaseTextModel
from .head import HeadConfig, TextHead

__all__ = ["HEAD_FORMAT", "TextModel", "load_head", "save_head"]

HEAD_FORMAT = "lit-text-head"
HEAD_VERSION = 1


class TextModel(BaseTextModel):
    """MiniLM + trained head (or the training-free ConSE map) into an image tower's space.

    The joint space is the square root of the class posterior (unit vectors, ``C`` = 1000):
    a photo's is its tower's posterior, a text's is the head's class distribution, and
    their dot product is the Bhattacharyya coefficient of the two distributions.

    Args:
        encoder: a :class:`~lit.text.minilm.MiniLM`.
        head: a :class:`~lit.text.head.TextHead`, or ``None`` for the training-free baseline.
        tower: the frozen :class:`~lit.text.towers.EfficientNetTower`.
        name: the model's name.
        class_keys: ``(C, 384)`` class-name embeddings (training-free baseline only).
    """

    def __init__(self, encoder, head: TextHead | None, tower, name: str, class_keys: torch.Tensor | None = None) -> None:
        self.encoder, self.head, self.image_tower, self.name = encoder, head, tower, name
        self.class_keys = class_keys
        if head is None and class_keys is None:
            raise UsageError("a text model needs a head or class keys")

    @property
    def max_tokens(self) -> int:
        return self.encoder.max_tokens

    @torch.no_grad()
    def encode(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Joint-space embeddings of already-clean texts, and which were truncated.

        Shape:
            - output: :math:`(Q, D)` unit norm, :math:`(Q,)` bool.
        """
        m, truncated = self.encoder.embed(texts)
        if self.head is not None:
            tokens = self.encoder.token_counts(texts) if self.head.cfg.free_min_tokens > 0 else None
            q = torch.sqrt(self.head.class_weights(m, tokens))
        else:  # ConSE: softmax over class-name similarities
            q = torch.sqrt(torch.softmax(m @ self.class_keys.to(m).T / 0.05, dim=-1))
        return F.normalize(q, dim=-1), truncated

    @torch.no_grad()
    def image_space(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Stored pooled image embeddings ``(N, D)`` -> joint-space vectors (square-root class posterior)."""
        return F.normalize(torch.sqrt(self.image_tower.posterior(embeddings)), dim=-1)


def save_head(path: str | os.PathLike, head: TextHead, tower: str, extra: dict | None = None) -> str:
    """Write a head file (``.safetensors``, or ``torch.save`` for another suffix); returns its sha256.

    Learned parameters are stored as they are, the class keys in float16; a linear head's
    prototypes come from the tower and are not stored.
    """
    state = {k: v.detach().cpu().contiguous() for k, v in head.state_dict().items() if k != "prototypes"}
    if "keys" in state:
        state["keys"] = state["keys"].half()
    meta = {"format": HEAD_FORMAT, "version": str(HEAD_VERSION), "config": json.dumps(head.cfg.to_dict()),
            "tower": tower, "encoder": "all-MiniLM-L6-v2", "extra": json.dumps(extra or {})}
    if os.fspath(path).endswith(".safetensors"):
        from ..models.checkpoint import write_safetensors

        write_safetensors(path, state, meta)
    else:
        with atomic_path(path) as tmp:
            torch.save({**meta, "version": HEAD_VERSION, "state_dict": state}, tmp)
    return file_sha256(path)


def load_head(path: str | os.PathLike, sha256: str | None = None, device="cpu"):
    """Read a head file (``.safetensors`` or ``.pt``, ``weights_only``); returns
    ``(state, cfg, tower_name)``.

    Raises:
        CheckpointError: missing, unreadable, another kind of file, or (with ``sha256``)
            another file than the registry's.
    """
    from ..models.checkpoint import is_safetensors_header, read_safetensors

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such text head file")
    if sha256 is not None and file_sha256(path) != sha256:
        raise CheckpointError(f"{path}: sha256 does not match the registry's {sha256}")
    with open(path, "rb") as f:
        head = f.read(64)
    if is_safetensors_header(head, path.stat().st_size):
        state, raw = read_safetensors(path, map_location=device)
    else:
        try:
            raw = torch.load(path, map_location=device, weights_only=True)
        except Exception as err:  # noqa: BLE001 - any unreadable file
            raise CheckpointError(f"{path}: not a readable text head file ({type(err).__name__})") from None
        state = raw.get("state_dict") if isinstance(raw, dict) else None
    if not isinstance(raw, dict) or raw.get("format") != HEAD_FORMAT or not isinstance(state, dict):
        raise CheckpointError(f"{path}: not a lit text head file (format {raw.get('format') if isinstance(raw, dict) else None!r})")
    try:
        cfg = HeadConfig(**json.loads(raw["config"]))
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: bad text head config ({err})") from None
    return state, cfg, raw["tower"]
