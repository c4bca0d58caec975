"""``lit models``: the registered models, the default, and which are on this machine."""

from __future__ import annotations

NAME = "models"
HELP = "list registered models: the default, and which are on this machine"


def add_arguments(p) -> None:
    pass


def _location(cfg) -> str:
    """Where a registered model's file is on this machine, or how to get it."""
    from pathlib import Path

    from .._download import cache_dir
    from ..hub import WEIGHTS_DIR

    if cfg.local is not None and (WEIGHTS_DIR / cfg.local).is_file():
        return f"installed ({WEIGHTS_DIR / cfg.local})"
    cached = Path(cache_dir()) / cfg.filename
    if cached.is_file():
        return f"downloaded ({cached})"
    return f"not here: `lit download {cfg.name}`" if cfg.url else "missing (ships with the repository)"


def run(args) -> int:
    from .._download import cache_dir
    from ..hub import REGISTRY
    from ._common import DEFAULT_MODEL

    for name in sorted(REGISTRY):
        cfg = REGISTRY[name]
        mark = "*" if name == DEFAULT_MODEL else " "
        print(f"{mark} {name:14s} {_location(cfg)}")
        print(f"    {cfg.description} [{cfg.license}]")
    print(f"* the default model (--model); files are cached in {cache_dir()}")
    return 0
