"""Matching images under the model's own match rule: two images (``lit match``, the
demo), or the pairs of a pairs file (``lit match --pairs``) written as JSON or as an HDF5
file in hloc's matches layout.

The rule travels with the model (its config and weights: FIRe's cosine >= 0.9, lit-effl0's
background test): ``model.match_rule(threshold, margin)`` gives it, with either part
replaced (see :class:`lit.matching.MatchRule`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from .._fileio import atomic_path, atomic_write
from .._image import load_image
from .._names import json_fields
from ..matching import MatchRule
from ..types import Matches

__all__ = ["PairMatches", "match_images", "match_pairs", "pair_key", "write_matches_h5", "write_matches_json"]

_EXIF_ORIENTATION = 0x0112


def match_images(model, image_a, image_b, *, threshold: float | None | str = "model", ratio: float | None = None,
                 margin: float | None | str = "model", scales=None, features_num=None, image_size=None,
                 progress: bool = False):
    """Load, extract and match two images with the model's rule unless ``threshold`` /
    ``margin`` replace its parts (``progress``: a tqdm bar on stderr over the two extractions).

    Returns:
        ``(image_a, image_b, feats_a, feats_b, matches, rule)``; images as loaded
        (3 x H x W tensors), features as :meth:`model.extract` gives them, the
        :class:`lit.matching.MatchRule` used.
    """
    rule = model.match_rule(threshold, margin)
    size = model.cfg.runtime.image_size if image_size is None else image_size
    from tqdm import tqdm

    img_a, img_b = load_image(image_a, size), load_image(image_b, size)
    fa, fb = (model.extract(img, scales=scales, features_num=features_num)
              for img in tqdm((img_a, img_b), desc="extract", unit="img", disable=not progress, leave=False))
    return img_a, img_b, fa, fb, rule.match(fa, fb, ratio=ratio), rule


# ---------------------------------------------------------------------------- many pairs
@dataclass(frozen=True)
class PairMatches:
    """The matches of one pair of a pairs file (:func:`match_pairs`).

    Attributes:
        name_a, name_b: the names as written in the pairs file.
        matches: the :class:`lit.types.Matches` under the rule.
        features_a, features_b: number of super-features of each image.
        positions_a, positions_b: ``(M, 2)`` float32 ``(x, y)`` of each match, in pixels of
            the original image files (not of the downscaled network input).
    """

    name_a: str
    name_b: str
    matches: Matches
    features_a: int
    features_b: int
    positions_a: np.ndarray
    positions_b: np.ndarray


def _original_size(path: str) -> tuple[int, int]:
    """``(width, height)`` of an image file as displayed (EXIF rotation applied)."""
    with Image.open(path) as im:
        w, h = im.size
        if im.getexif().get(_EXIF_ORIENTATION) in (5, 6, 7, 8):  # rotated by 90 degrees
            w, h = h, w
    return w, h


def match_pairs(model, pairs: Sequence[tuple[str, str]], root_a: str | os.PathLike = ".",
                root_b: str | os.PathLike | None = None, *, threshold: float | None | str = "model",
                margin: float | None | str = "model", ratio: float | None = None, scales=None,
                features_num: int | None = None, image_size: int | None = None,
                progress: bool = True) -> tuple[list[PairMatches], MatchRule]:
    """Match many pairs of images in one process (``lit match --pairs``), each image
    extracted once, under the model's rule unless ``threshold`` / ``margin`` replace its parts.

    Args:
        pairs: ``(name_a, name_b)`` pairs, e.g. from :func:`lit.pipeline.read_pairs`.
        root_a: folder the first names are relative to (absolute names are kept).
        root_b: folder of the second names (default ``root_a``).
        progress: a tqdm bar on stderr over the images to extract.

    Returns:
        ``(one PairMatches per pair, in order; the MatchRule used)``.

    Raises:
        ImageReadError: an image cannot be read (the message names it).
    """
    from tqdm import tqdm

    rule = model.match_rule(threshold, margin)
    size = model.cfg.runtime.image_size if image_size is None else image_size
    root_b = root_a if root_b is None else root_b
    paths = {}
    for a, b in pairs:
        paths.setdefault(os.path.join(os.fspath(root_a), a), None)
        paths.setdefault(os.path.join(os.fspath(root_b), b), None)
    feats: dict[str, tuple] = {}
    for path in tqdm(list(paths), desc="extract", unit="img", disable=not progress):
        img = load_image(path, size)
        f = model.extract(img, scales=scales, features_num=features_num)
        w, h = _original_size(path)
        to_original = torch.tensor([w / img.shape[-1], h / img.shape[-2]])
        feats[path] = (f, to_original)
    out = []
    for a, b in pairs:
        (fa, sa), (fb, sb) = feats[os.path.join(os.fspath(root_a), a)], feats[os.path.join(os.fspath(root_b), b)]
        m = rule.match(fa, fb, ratio=ratio)
        pa = (fa.positions[m.indices_a.to(fa.positions.device)].cpu() * sa).numpy().astype(np.float32)
        pb = (fb.positions[m.indices_b.to(fb.positions.device)].cpu() * sb).numpy().astype(np.float32)
        out.append(PairMatches(a, b, m, len(fa), len(fb), pa, pb))
    return out, rule


def write_matches_json(results: Sequence[PairMatches], path: str | os.PathLike, rule: MatchRule) -> None:
    """JSON ``{"rule", "pairs": [{"a", "b", "matches", "score", "indices_a", "indices_b",
    "similarity", "positions_a", "positions_b"}]}`` (positions in original image pixels); names
    as :func:`lit.display_name` shows them, with ``a_bytes`` / ``b_bytes`` (hex) where that
    differs from the file's name (:func:`lit.pipeline.json_name` reads either)."""
    doc = {"rule": rule.describe(), "threshold": rule.threshold, "margin": rule.margin,
           "pairs": [{**json_fields("a", r.name_a), **json_fields("b", r.name_b), "matches": len(r.matches),
                      "score": r.matches.score,
                      "indices_a": r.matches.indices_a.tolist(), "indices_b": r.matches.indices_b.tolist(),
                      "similarity": r.matches.similarity.tolist(), "positions_a": r.positions_a.tolist(),
                      "positions_b": r.positions_b.tolist()} for r in results]}
    with atomic_write(path, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1)


def pair_key(name_a: str, name_b: str) -> str:
    """hloc's key of a pair in a matches file: ``name_a/name_b`` with the ``/`` inside each
    name replaced by ``-`` (``hloc.utils.io.names_to_pair``)."""
    return "/".join((name_a.replace("/", "-"), name_b.replace("/", "-")))


def write_matches_h5(results: Sequence[PairMatches], path: str | os.PathLike, rule: MatchRule) -> None:
    """HDF5 in hloc's matches layout, one group per pair at :func:`pair_key`:
    ``matches0`` ``(N_a,)`` int32 (the matched feature of image b for each feature of
    image a, -1 for none) and ``matching_scores0`` ``(N_a,)`` float32 (cosine, 0 for none),
    as hloc's ``match_features`` writes them; plus lit's own ``indices`` ``(M, 2)``,
    ``similarity`` ``(M,)`` and ``positions0`` / ``positions1`` ``(M, 2)`` (original image
    pixels, for tools that have no feature file of lit's super-features). The file records
    the rule (attribute ``rule``) and the pair names (attributes ``name0``, ``name1``)."""
    import h5py

    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs["format"], f.attrs["rule"] = "lit-matches", rule.describe()
        for r in results:
            key = pair_key(r.name_a, r.name_b)
            if key in f:
                continue  # a pair listed twice
            g = f.create_group(key)
            m = r.matches
            matches0 = np.full(r.features_a, -1, np.int32)
            scores0 = np.zeros(r.features_a, np.float32)
            ia, ib = m.indices_a.cpu().numpy(), m.indices_b.cpu().numpy()
            matches0[ia], scores0[ia] = ib, m.similarity.detach().cpu().float().numpy()
            g.create_dataset("matches0", data=matches0)
            g.create_dataset("matching_scores0", data=scores0)
            g.create_dataset("indices", data=np.stack([ia, ib], 1).astype(np.int64).reshape(-1, 2))
            g.create_dataset("similarity", data=m.similarity.detach().cpu().float().numpy())
            g.create_dataset("positions0", data=r.positions_a.reshape(-1, 2))
            g.create_dataset("positions1", data=r.positions_b.reshape(-1, 2))
            g.attrs["name0"], g.attrs["name1"] = r.name_a, r.name_b
