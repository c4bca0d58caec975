"""Package data: the files installed with lit, found through :mod:`importlib.resources`.

The weights, registry and model cards live in the repository's top-level ``weights/``
folder and install as the data package ``lit.weights`` (setuptools ``package_dir``, editable
installs included); the bundled photos are ``lit/assets/photos``. Nothing is looked up
relative to the source tree, so a plain ``pip install`` works from any folder.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path

from .errors import LitError

__all__ = ["WEIGHTS_PACKAGE", "asset_photos", "weights_file", "weights_folder"]

#: the data package that holds lit's own weights and the registry
WEIGHTS_PACKAGE = "lit.weights"

_REINSTALL = "reinstall lit (`pip install .`, or `pip install -e .` in a checkout: a checkout on PYTHONPATH alone lacks it)"


def _folder(package: str, what: str) -> Path:
    try:
        root = importlib.resources.files(package)
    except ModuleNotFoundError:
        raise LitError(f"{what} (package {package}) is not installed: {_REINSTALL}") from None
    if not isinstance(root, Path):  # a zip import: lit reads its data as files
        raise LitError(f"{what} ({package}) is not a folder on disk ({root}): install lit unzipped")
    return root


def weights_folder() -> Path:
    """The folder of the installed ``lit.weights`` data package."""
    return _folder(WEIGHTS_PACKAGE, "lit's weights and registry")


def weights_file(name: str) -> Path:
    """Path of the file ``name`` of ``lit.weights``.

    Raises:
        LitError: the data package or the file is not installed.
    """
    path = weights_folder() / name
    if not path.is_file():
        raise LitError(f"{name} is missing from lit's installed weights ({path.parent}): {_REINSTALL}")
    return path


def asset_photos() -> Path:
    """The folder of the bundled photos (``lit/assets/photos``: one sub-folder per scene)."""
    path = _folder("lit", "lit") / "assets" / "photos"
    if not path.is_dir():
        raise LitError(f"lit's bundled photos are missing ({path}): {_REINSTALL}")
    return path
