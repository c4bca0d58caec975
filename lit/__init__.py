"""lit: landmark image retrieval with super-features (FIRe / LIT), written from the method."""

from ._image import ImageReadError, load_image
from .hub import list_models, load_model
from .types import LocalFeatures, Matches, SuperFeatures

__version__ = "0.1.0"


def match(feats_a, feats_b, threshold: float = 0.9, ratio: float | None = None) -> Matches:
    """Match two sets of super-features (see :func:`lit.matching.match`)."""
    from .matching import match as _match

    return _match(feats_a, feats_b, threshold=threshold, ratio=ratio)


__all__ = [
    "ImageReadError", "LocalFeatures", "Matches", "SuperFeatures", "list_models", "load_image",
    "load_model", "match", "__version__",
]
