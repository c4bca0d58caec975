"""Text models by name: the one place that knows every kind of text model.

Names: ``lit-text-effl0`` (the default: all-MiniLM-L6-v2 + the head trained by lit, shipped
with lit), another registered text head (``lit models``), a path to a head file,
``conse-effl0`` (training-free baseline: the class keys of ``lit-text-effl0`` without its
head), or ``open_clip:ARCH:TAG`` when ``open_clip_torch`` is installed (:mod:`lit.text.clip`).
Heads, encoder weights and image towers are located through the registry (:mod:`lit.hub`),
which checks every file's sha256.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .. import hub
from ..errors import UsageError
from .base import DEFAULT_TEXT_MODEL, BaseTextModel
from .clip import load_open_clip
from .head import TextHead
from .minilm import load_minilm
from .model import TextModel, load_head
from .towers import load_tower

__all__ = ["image_tower_of", "load_text_model"]


def load_text_model(name: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> BaseTextModel:
    """Load a text model by name or head path (see the module docstring); default ``lit-text-effl0``.

    Raises:
        UsageError: an unknown name.
        MissingDependencyError: an optional package it needs is not installed.
    """
    name = os.fspath(name) if name is not None else DEFAULT_TEXT_MODEL
    if name.startswith("open_clip:"):
        return load_open_clip(name, device=device)
    if name.startswith("conse-"):
        tower = load_tower(name.split("-", 1)[1], device)
        keys_of = f"lit-text-{tower.name}"
        if keys_of not in hub.list_models("text-head"):
            raise UsageError(f"{name}: the class keys ship with {keys_of}, which is not registered")
        state, _, _ = load_head(hub.resolve(keys_of, kind="text-head"), device=device)
        return TextModel(load_minilm(device=device), None, tower, name, class_keys=state["keys"].float())
    state, cfg, tower_name = load_head(_head_path(name), device=device)
    tower = load_tower(tower_name, device)
    keys = state.get("keys")
    head = TextHead(cfg, keys.float() if keys is not None else None, tower.prototypes[0] if cfg.kind == "linear" else None)
    state = {k: v.float() for k, v in state.items()}
    if cfg.kind == "linear":
        state["prototypes"] = head.prototypes
    head.load_state_dict(state)
    return TextModel(load_minilm(device=device), head.to(device).eval(), tower, name)


def _head_path(name: str) -> Path:
    """The head file of a registered text head (sha256 checked) or a path."""
    if name in hub.list_models("text-head"):
        return hub.resolve(name, kind="text-head")
    if os.path.isfile(name):
        return Path(name)
    known = ", ".join([*hub.list_models("text-head"), "conse-effl0", "open_clip:ARCH:TAG"])
    raise UsageError(f"{name}: neither a registered text model ({known}) nor a text head file")


def image_tower_of(name: str | os.PathLike | None = None, device: str | torch.device = "cpu"):
    """Only the image tower of a text model (what ``lit extract`` runs), without loading its text side."""
    name = os.fspath(name) if name is not None else DEFAULT_TEXT_MODEL
    if name.startswith("open_clip:"):
        return load_open_clip(name, device=device).image_tower
    if name.startswith("conse-"):
        return load_tower(name.split("-", 1)[1], device)
    return load_tower(load_head(_head_path(name))[2], device)
