"""Revisited Oxford / Paris (and their 1M distractors) in the revisitop directory layout.

Layout under a ``root`` directory (what :func:`lit.data.download_dataset` creates)::

    root/roxford5k/gnd_roxford5k.pkl      ground truth (imlist, qimlist, gnd)
    root/roxford5k/jpg/<imlist[i]>.jpg    database images
    root/roxford5k/jpg/<qimlist[i]>.jpg   query images (same directory, not in imlist)
    root/rparis6k/gnd_rparis6k.pkl
    root/rparis6k/jpg/<imlist[i]>.jpg
    root/revisitop1m/revisitop1m.txt      R1M distractor list, one path per line
    root/revisitop1m/jpg/<line>           R1M images
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import NotFoundError
from ..evaluate.revisited import classic_map, load_ground_truth, revisited_map

__all__ = ["REVISITED_NAMES", "RevisitedDataset", "r1m_image_list"]

REVISITED_NAMES = ("roxford5k", "rparis6k")


class RevisitedDataset:
    """A revisitop-format retrieval benchmark: database images, queries and ground truth.

    Args:
        name: ``"roxford5k"`` or ``"rparis6k"`` (any other name works if the same layout
            exists under ``root``).
        root: directory holding ``<name>/gnd_<name>.pkl`` and ``<name>/jpg/``.
        ext: image file extension appended to the names of ``imlist``/``qimlist``.

    Raises:
        FileNotFoundError: no ground-truth file (the message says how to download it).
        ValueError: the ground-truth file is malformed (or refers to code: it is read with
            a restricted unpickler).

    Example:
        >>> ds = RevisitedDataset("roxford5k", "data/datasets")    # doctest: +SKIP
        >>> img = lit.load_image(ds.queries[0], bbox=ds.bboxes[0])  # doctest: +SKIP
        >>> res = ds.evaluate(ranks)                                 # doctest: +SKIP
    """

    def __init__(self, name: str, root: str | os.PathLike, ext: str = ".jpg"):
        if not isinstance(name, str) or not name:
            raise TypeError(f"name must be a non-empty string, got {name!r}")
        self.name = name
        self.root = Path(root)
        self.dir = self.root / name
        self.image_dir = self.dir / "jpg"
        self.gnd_path = self.dir / f"gnd_{name}.pkl"
        self.ext = ext
        if not self.gnd_path.is_file():
            hint = (f"; download it with lit.data.download_dataset({name!r}, {str(self.root)!r})"
                    if name in REVISITED_NAMES else "")
            cli = f"; download it with `lit download {name} --root {self.root}`" if name in REVISITED_NAMES else ""
            raise NotFoundError(f"{self.gnd_path}: ground-truth file not found{hint}",
                                cli=f"{self.gnd_path}: ground-truth file not found{cli}")
        self.cfg: dict[str, Any] = load_ground_truth(self.gnd_path)
        #: True for classic Oxford5k/Paris6k ground truth (``ok``/``junk`` instead of easy/hard)
        self.classic = any("easy" not in g for g in self.cfg["gnd"])

    # ------------------------------------------------------------------ listings
    @property
    def imlist(self) -> list[str]:
        """Database image names (without extension)."""
        return list(self.cfg["imlist"])

    @property
    def qimlist(self) -> list[str]:
        """Query image names (without extension)."""
        return list(self.cfg["qimlist"])

    @property
    def gnd(self) -> list[dict]:
        """Per-query ground truth: ``bbx``, ``easy``, ``hard``, ``junk``."""
        return self.cfg["gnd"]

    @property
    def n_images(self) -> int:
        return len(self.cfg["imlist"])

    @property
    def n_queries(self) -> int:
        return len(self.cfg["qimlist"])

    def __len__(self) -> int:
        return self.n_images

    def __repr__(self) -> str:
        return f"RevisitedDataset({self.name!r}, root={str(self.root)!r}, images={self.n_images}, queries={self.n_queries})"

    def image_path(self, i: int) -> Path:
        """Path of database image ``i``."""
        return self.image_dir / f"{self.cfg['imlist'][i]}{self.ext}"

    def query_path(self, i: int) -> Path:
        """Path of query image ``i`` (the full image: crop it with :meth:`query_bbox`)."""
        return self.image_dir / f"{self.cfg['qimlist'][i]}{self.ext}"

    @property
    def images(self) -> list[Path]:
        """Paths of all database images, in ``imlist`` order (the columns of the ranks)."""
        return [self.image_path(i) for i in range(self.n_images)]

    @property
    def queries(self) -> list[Path]:
        """Paths of all query images, in ``qimlist`` order."""
        return [self.query_path(i) for i in range(self.n_queries)]

    def query_bbox(self, i: int) -> tuple[float, float, float, float]:
        """Bounding box ``(x1, y1, x2, y2)`` of query ``i`` in pixels of the full image."""
        x1, y1, x2, y2 = (float(v) for v in np.asarray(self.gnd[i]["bbx"]).reshape(4))
        return x1, y1, x2, y2

    @property
    def bboxes(self) -> np.ndarray:
        """Query bounding boxes as a :math:`(Q, 4)` float array of ``(x1, y1, x2, y2)``."""
        return np.array([self.query_bbox(i) for i in range(self.n_queries)], dtype=np.float64).reshape(-1, 4)

    def missing_images(self) -> list[Path]:
        """Database and query image files that do not exist (empty when complete)."""
        paths = dict.fromkeys(self.images + self.queries)
        return [p for p in paths if not p.is_file()]

    def evaluate(self, ranks: Any, kappas=(1, 5, 10)) -> dict:
        """:func:`lit.evaluate.revisited_map` with this dataset's ground truth
        (:func:`lit.evaluate.classic_map` for classic ``ok``/``junk`` ground truth)."""
        if self.classic:
            return classic_map(ranks, self.gnd, kappas=kappas)
        return revisited_map(ranks, self.gnd, kappas=kappas)


def r1m_image_list(root: str | os.PathLike, list_file: str | os.PathLike | None = None) -> list[Path]:
    """Paths of the R1M distractor images (revisitop1m), in the official list order.

    Assumed layout (that of the revisitop download script, not checked against the
    server): ``root/revisitop1m/revisitop1m.txt`` lists one image per line as a path
    relative to ``root/revisitop1m/jpg/``, extension included; the images are the content
    of the 100 ``revisitop1m.<i>.tar.gz`` archives extracted into that ``jpg/`` directory.
    Without the list file, the ``*.jpg`` files under ``jpg/`` are listed in sorted order
    instead, with a warning (the order then differs from the official list).

    Args:
        root: the directory holding ``revisitop1m/``.
        list_file: another list file to use (same format).

    Returns:
        Image paths (not checked for existence when read from the list).

    Raises:
        FileNotFoundError: neither the list file nor the image directory exists.
    """
    base = Path(root) / "revisitop1m"
    image_dir = base / "jpg"
    lst = Path(list_file) if list_file is not None else base / "revisitop1m.txt"
    if lst.is_file():
        with open(lst, encoding="utf-8") as f:
            names = [line.strip() for line in f]
        return [image_dir / n for n in names if n]
    if list_file is not None:
        raise NotFoundError(f"{lst}: image list not found")
    if not image_dir.is_dir():
        raise NotFoundError(
            f"{lst}: R1M image list not found (nor {image_dir}); download it with "
            f"lit.data.download_dataset('revisitop1m', {str(root)!r})",
            cli=f"{lst}: R1M image list not found (nor {image_dir}); download it with "
                f"`lit download revisitop1m --root {root}`")
    warnings.warn(f"{lst} not found: listing {image_dir} in sorted order instead of the official order",
                  stacklevel=2)
    return sorted(p for p in image_dir.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg") and p.is_file())
