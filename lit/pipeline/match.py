"""Matching two images under the model's own match rule (``lit match``, the demo)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .._image import load_image
from ..matching import match

__all__ = ["MatchRule", "match_images", "match_rule", "match_threshold"]


@dataclass(frozen=True)
class MatchRule:
    """How a model decides that two super-features match (:func:`lit.matching.match`).

    Args:
        threshold: minimum cosine similarity (``None``: none).
        margin: margin of the background test (``None``: no background test).
        background: background super-features of the test, :math:`(M, D)`, or ``None``.
    """

    threshold: float | None = 0.9
    margin: float | None = None
    background: torch.Tensor | None = field(default=None, repr=False)

    def describe(self) -> str:
        """One line for the command line: what a match is under this rule."""
        parts = [] if self.threshold is None else [f"cosine >= {self.threshold:g}"]
        if self.background is not None:
            parts.append(f"cosine >= best background cosine + {self.margin:g} "
                         f"({len(self.background)} background super-features)")
        return " and ".join(parts) or "reciprocal nearest neighbours"


def match_rule(model, threshold: float | None | str = "model", margin: float | None | str = "model") -> MatchRule:
    """The match rule of ``model``, with ``threshold`` / ``margin`` replacing its own when
    not ``"model"``.

    A registered model carries its rule (``lit.load_model`` sets it from the registry entry,
    like timm's pretrained cfg): FIRe's cosine >= 0.9; lit-effl0's background test (a match
    must beat by a calibrated margin the best similarity of either super-feature to the
    super-features of unrelated photos, weights/README.md). ``margin=None`` drops the
    background test (the plain reciprocal-neighbour rule at ``threshold``).
    """
    thr = getattr(model, "match_threshold", 0.9) if isinstance(threshold, str) and threshold == "model" else threshold
    bg = getattr(model, "match_background", None)
    mg = getattr(model, "match_margin", None) if isinstance(margin, str) and margin == "model" else margin
    for name, value in (("threshold", threshold), ("margin", margin)):
        if isinstance(value, str) and value != "model":
            raise ValueError(f"{name} must be a float, None or 'model', got {value!r}")
    if mg is None:
        bg = None
    elif bg is None:
        raise ValueError("this model has no match background: a margin needs one (margin=None)")
    return MatchRule(threshold=None if thr is None else float(thr), margin=None if mg is None else float(mg),
                     background=bg)


def match_threshold(model) -> float | None:
    """The cosine threshold of a super-feature match for ``model``: its registry entry's
    value, 0.9 (FIRe's) otherwise (see :func:`match_rule` for the whole rule)."""
    thr = getattr(model, "match_threshold", 0.9)
    return None if thr is None else float(thr)


def match_images(model, image_a, image_b, *, threshold: float | None | str = "model", ratio: float | None = None,
                 margin: float | None | str = "model", scales=None, features_num=None, image_size=None):
    """Load, extract and match two images with the model's rule (:func:`match_rule`) unless
    ``threshold`` / ``margin`` are given.

    Returns:
        ``(image_a, image_b, feats_a, feats_b, matches, rule)``; images as loaded
        (3 x H x W tensors), features as :meth:`model.extract` gives them, the
        :class:`MatchRule` used.
    """
    rule = match_rule(model, threshold, margin)
    size = model.cfg.runtime.image_size if image_size is None else image_size
    img_a, img_b = load_image(image_a, size), load_image(image_b, size)
    fa = model.extract(img_a, scales=scales, features_num=features_num)
    fb = model.extract(img_b, scales=scales, features_num=features_num)
    m = match(fa, fb, threshold=rule.threshold, ratio=ratio, background=rule.background, margin=rule.margin)
    return img_a, img_b, fa, fb, m, rule
