"""Argument helpers shared by the command modules: they parse and check what the user
typed, and load what it names; no policy lives here (that is the library's)."""

from __future__ import annotations

import argparse
import os

from .. import DEFAULT_MODEL  # noqa: F401  (lit's __init__ is light: the heavy parts load lazily)
from ..errors import UsageError


def add_device_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, or cuda[:N] (default: auto)")


def add_model_arguments(p: argparse.ArgumentParser, extraction: bool = True) -> None:
    """``--model``, ``--device`` and (for commands that extract) the extraction settings."""
    p.add_argument("--model", default=None,
                   help=f"checkpoint path or registered name (default: {DEFAULT_MODEL}; `lit models` lists names)")
    add_device_argument(p)
    if extraction:
        p.add_argument("--scales", default=None,
                       help="comma-separated scales (default: the model's, FIRe: 2,1.414,1,0.707,0.5,0.353,0.25)")
        p.add_argument("--features-num", type=int, default=None,
                       help="super-features kept per image (default: the model's, FIRe: 1000)")
        p.add_argument("--image-size", type=int, default=None,
                       help="longer image side after downscaling (default: the model's, FIRe: 1024)")


def device(args) -> str:
    """The ``--device`` of ``args`` as a torch device name (this rank's GPU under torchrun)."""
    from .._device import resolve_device

    return str(resolve_device(args.device))


def load_model(args):
    """The model named by ``--model`` (default: the shipped model) on ``--device``."""
    import lit

    return lit.load_model(args.model or DEFAULT_MODEL, device=device(args))


def parse_scales(text: str | None) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        return tuple(float(s) for s in text.split(","))
    except ValueError:
        raise UsageError(f"--scales must be comma-separated numbers, got {text!r}") from None


def none_or_float(value: str, option: str) -> float | None:
    if value.lower() == "none":
        return None
    try:
        return float(value)
    except ValueError:
        raise UsageError(f"{option} must be a number or none, got {value!r}") from None


def check_figure_path(path: str) -> None:
    ext = os.path.splitext(path)[1].lower()
    if ext not in (".png", ".pdf", ".svg"):
        raise UsageError(f"{path}: figures are written as .png, .pdf or .svg (got {ext or 'no extension'!r})")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise UsageError(f"{path}: the folder {parent} does not exist")
