"""lit: landmark image retrieval with super-features (FIRe / LIT), written from the method.

Importing ``lit`` is cheap: torch and the rest load when a name that needs them is first
used (PEP 562), so ``lit --version`` and ``lit --help`` answer at once.
"""

from __future__ import annotations

import importlib
import os as _os
from typing import TYPE_CHECKING

__version__ = "0.1.0"

#: The model used when none is named: the small model shipped with lit (``lit.weights``).
DEFAULT_MODEL = "lit-effl0"

_LAZY = {
    "ImageReadError": "lit.errors", "ImageTooLargeError": "lit.errors", "ImageTooSmallError": "lit.errors",
    "LitError": "lit.errors",
    "LocalFeatures": "lit.types", "Matches": "lit.types", "SuperFeatures": "lit.types",
    "display_name": "lit._names", "load_image": "lit._image",
    "list_models": "lit.hub",
}

if TYPE_CHECKING:  # pragma: no cover
    from ._image import load_image
    from ._names import display_name
    from .errors import ImageReadError, ImageTooLargeError, ImageTooSmallError, LitError
    from .hub import list_models
    from .types import LocalFeatures, Matches, SuperFeatures


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'lit' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


def load_model(source: str | _os.PathLike | None = None, device="cpu", progress: bool = True):
    """Load a super-feature model (see :func:`lit.hub.load_model`).

    Args:
        source: a checkpoint path, a registered name (:func:`list_models`), or ``None``
            for :data:`DEFAULT_MODEL` (``lit-effl0``, shipped with lit: no download).
        device: where to put the model (``"auto"``: CUDA when available).
        progress: show a progress bar when downloading.
    """
    from .hub import load_model as _load

    return _load(DEFAULT_MODEL if source is None else source, device=device, progress=progress)


def match(feats_a, feats_b, threshold: float = 0.9, ratio: float | None = None, *, background=None,
          margin: float | None = None) -> Matches:
    """Match two sets of super-features (see :func:`lit.matching.match`).

    ``threshold`` is a minimum cosine similarity (above 1 raises ``ValueError``, below 0
    warns) and ``ratio`` a bound in ``(0, 1]`` on the ratio test (``<= 0`` raises, above 1
    warns: it tests nothing). ``background`` (descriptors of unrelated photos) and
    ``margin`` add the background test of a model's match rule; a model's own rule is
    ``model.match_rule()`` (``model.match`` uses it).
    """
    from .matching import match as _match

    return _match(feats_a, feats_b, threshold=threshold, ratio=ratio, background=background, margin=margin)


__all__ = [
    "DEFAULT_MODEL", "ImageReadError", "ImageTooLargeError", "ImageTooSmallError", "LitError", "LocalFeatures",
    "Matches", "SuperFeatures", "display_name", "list_models", "load_image", "load_model", "match", "__version__",
]
