"""lit: landmark image retrieval with super-features (FIRe / LIT), written from the method."""

import os as _os

from ._image import ImageReadError, ImageTooLargeError, ImageTooSmallError, display_name, load_image
from .hub import list_models
from .types import LocalFeatures, Matches, SuperFeatures

__version__ = "0.1.0"

#: The model used when none is named: the small model shipped in ``weights/``.
DEFAULT_MODEL = "lit-effl0"


def load_model(source: "str | _os.PathLike | None" = None, device="cpu", progress: bool = True):
    """Load a super-feature model (see :func:`lit.hub.load_model`).

    Args:
        source: a checkpoint path, a registered name (:func:`list_models`), or ``None``
            for :data:`DEFAULT_MODEL` (``lit-effl0``, shipped with lit: no download).
        device: where to put the model (``"auto"``: CUDA when available).
        progress: show a progress bar when downloading.
    """
    from .hub import load_model as _load

    if source is None:
        if DEFAULT_MODEL not in list_models():
            raise ValueError(f"the default model {DEFAULT_MODEL!r} is not registered here; pass a checkpoint path "
                             f"or one of: {', '.join(list_models())}")
        source = DEFAULT_MODEL
    return _load(source, device=device, progress=progress)


def match(feats_a, feats_b, threshold: float = 0.9, ratio: float | None = None, *, background=None,
          margin: float | None = None) -> Matches:
    """Match two sets of super-features (see :func:`lit.matching.match`).

    ``threshold`` is a minimum cosine similarity (above 1 raises ``ValueError``, below 0
    warns) and ``ratio`` a bound in ``(0, 1]`` on the ratio test (``<= 0`` raises, above 1
    warns: it tests nothing). ``background`` (descriptors of unrelated photos) and
    ``margin`` add the background test of a model's match rule; a model's own rule is
    ``lit.pipeline.match_rule(model)`` (``model.match`` uses it).
    """
    from .matching import match as _match

    return _match(feats_a, feats_b, threshold=threshold, ratio=ratio, background=background, margin=margin)


__all__ = [
    "DEFAULT_MODEL", "ImageReadError", "ImageTooLargeError", "ImageTooSmallError", "LocalFeatures", "Matches",
    "SuperFeatures", "display_name", "list_models", "load_image", "load_model", "match", "__version__",
]
