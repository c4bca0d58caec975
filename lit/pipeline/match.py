"""Matching two images under the model's own match rule (``lit match``, the demo).

The rule travels with the model (its config and weights: FIRe's cosine >= 0.9, lit-effl0's
background test): ``model.match_rule(threshold, margin)`` gives it, with either part
replaced (see :class:`lit.matching.MatchRule`).
"""

from __future__ import annotations

from .._image import load_image

__all__ = ["match_images"]


def match_images(model, image_a, image_b, *, threshold: float | None | str = "model", ratio: float | None = None,
                 margin: float | None | str = "model", scales=None, features_num=None, image_size=None):
    """Load, extract and match two images with the model's rule unless ``threshold`` /
    ``margin`` replace its parts.

    Returns:
        ``(image_a, image_b, feats_a, feats_b, matches, rule)``; images as loaded
        (3 x H x W tensors), features as :meth:`model.extract` gives them, the
        :class:`lit.matching.MatchRule` used.
    """
    rule = model.match_rule(threshold, margin)
    size = model.cfg.runtime.image_size if image_size is None else image_size
    img_a, img_b = load_image(image_a, size), load_image(image_b, size)
    fa = model.extract(img_a, scales=scales, features_num=features_num)
    fb = model.extract(img_b, scales=scales, features_num=features_num)
    return img_a, img_b, fa, fb, rule.match(fa, fb, ratio=ratio), rule
