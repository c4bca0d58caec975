"""Labelled image datasets for metric learning, a class-balanced batch sampler, transforms.

Two on-disk formats:

- Stanford Online Products (Oh Song et al., CVPR 2016): ``Ebay_train.txt`` and
  ``Ebay_test.txt`` in the dataset root, each a header line
  ``image_id class_id super_class_id path`` followed by one whitespace-separated row per
  image; ``path`` is relative to the root (``bicycle_final/111085122871_0.JPG``).
  Train holds classes 1-11318 (59,551 images), test classes 11319-22634 (60,502 images).
- "Folder per class": ``root/<class name>/**/<image>``; classes are the sorted
  sub-folder names, labelled ``0..C-1``.

Images are decoded with :func:`lit._image.open_image` (EXIF orientation, any PIL mode) into
RGB float tensors in ``[0, 1]``; the transforms below work on those tensors and leave the
mean/std normalisation to the model (:meth:`lit.metric.GlobalModel.normalize`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, Sampler

from .._image import list_images, open_image, pil_to_tensor

SOP_HEADER = ("image_id", "class_id", "super_class_id", "path")
SOP_FILES = {"train": "Ebay_train.txt", "test": "Ebay_test.txt"}
SMALL_CLASSES = ("replace", "skip")


class SOPList(NamedTuple):
    """One parsed SOP list file; all fields have one entry per image (``N``)."""

    image_ids: Tensor  #: (N,) int64
    class_ids: Tensor  #: (N,) int64, the product (the retrieval label)
    super_class_ids: Tensor  #: (N,) int64, one of 12 categories
    paths: list[str]  #: absolute or root-relative joined paths


def read_sop_list(path: str | os.PathLike, root: str | os.PathLike | None = None) -> SOPList:
    """Parse ``Ebay_train.txt`` / ``Ebay_test.txt``.

    Args:
        path: the list file.
        root: folder the image paths are relative to (default: the list file's folder).

    Returns:
        The image ids, class ids, super-class ids and joined image paths, in file order.

    Raises:
        ValueError: missing file, wrong header, or a malformed row (the message gives the
            line number).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"{path}: no such SOP list file")
    root = os.path.dirname(path) if root is None else os.fspath(root)
    image_ids, class_ids, super_ids, paths = [], [], [], []
    with open(path, encoding="utf-8") as f:
        header = f.readline().split()
        if tuple(header) != SOP_HEADER:
            raise ValueError(f"{path}: line 1 must be the header {' '.join(SOP_HEADER)!r}, got {' '.join(header)!r}")
        for lineno, line in enumerate(f, start=2):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 4:
                raise ValueError(f"{path}:{lineno}: expected 4 columns ({' '.join(SOP_HEADER)}), got {len(parts)}")
            try:
                iid, cid, sid = (int(v) for v in parts[:3])
            except ValueError:
                raise ValueError(f"{path}:{lineno}: image_id, class_id and super_class_id must be integers: {line.strip()!r}") from None
            image_ids.append(iid)
            class_ids.append(cid)
            super_ids.append(sid)
            paths.append(os.path.join(root, parts[3]))
    if not paths:
        raise ValueError(f"{path}: no images listed")
    as_tensor = lambda v: torch.tensor(v, dtype=torch.int64)  # noqa: E731
    return SOPList(as_tensor(image_ids), as_tensor(class_ids), as_tensor(super_ids), paths)


def read_image(path: str) -> Tensor:
    """Decode one image as an RGB float tensor :math:`(3, H, W)` in ``[0, 1]``."""
    return pil_to_tensor(open_image(path))


class LabelledImages(Dataset):
    """Images with integer labels; ``dataset[i]`` is ``(transform(image), label)``.

    Args:
        paths: image files.
        labels: one integer label per image.
        transform: applied to the :math:`(3, H, W)` ``[0, 1]`` tensor (``None``: none, so
            images keep their own size and cannot be batched).

    Attributes:
        paths: the image files.
        labels: :math:`(N,)` int64 tensor.
    """

    def __init__(self, paths: Sequence[str], labels: Sequence[int] | Tensor, transform: Callable | None = None) -> None:
        labels = torch.as_tensor(labels, dtype=torch.int64).reshape(-1)
        if len(paths) != labels.numel():
            raise ValueError(f"{len(paths)} paths for {labels.numel()} labels")
        self.paths = list(paths)
        self.labels = labels
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        image = read_image(self.paths[index])
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[index])

    @property
    def num_classes(self) -> int:
        return int(torch.unique(self.labels).numel())


class StanfordOnlineProducts(LabelledImages):
    """Stanford Online Products split read from ``root/Ebay_{split}.txt``.

    Labels are the ``class_id`` column (product ids, as in the file). See the module
    docstring for the format.

    Args:
        root: dataset folder (holding ``Ebay_train.txt``, ``Ebay_test.txt`` and the
            ``*_final`` image folders).
        split: ``"train"`` or ``"test"``.
        transform: see :class:`LabelledImages`.

    Attributes:
        super_labels: :math:`(N,)` ``super_class_id`` column.
        image_ids: :math:`(N,)` ``image_id`` column.
    """

    def __init__(self, root: str | os.PathLike, split: str = "train", transform: Callable | None = None) -> None:
        if split not in SOP_FILES:
            raise ValueError(f"split must be one of {tuple(SOP_FILES)}, got {split!r}")
        root = os.fspath(root)
        lst = read_sop_list(os.path.join(root, SOP_FILES[split]), root)
        super().__init__(lst.paths, lst.class_ids, transform)
        self.super_labels = lst.super_class_ids
        self.image_ids = lst.image_ids
        self.split = split


class ImageFolderClasses(LabelledImages):
    """One sub-folder per class: ``root/<class>/**/<image>`` (searched recursively).

    Classes are the sorted names of the non-empty sub-folders and get labels ``0..C-1``;
    images directly in ``root`` are ignored.

    Attributes:
        classes: class names, ``classes[label]``.
    """

    def __init__(self, root: str | os.PathLike, transform: Callable | None = None) -> None:
        root = os.fspath(root)
        if not os.path.isdir(root):
            raise ValueError(f"{root}: not a directory")
        paths: list[str] = []
        labels: list[int] = []
        classes: list[str] = []
        for name in sorted(os.listdir(root)):
            folder = os.path.join(root, name)
            if not os.path.isdir(folder):
                continue
            images = list_images(folder)
            if not images:
                continue
            paths.extend(images)
            labels.extend([len(classes)] * len(images))
            classes.append(name)
        if not paths:
            raise ValueError(f"{root}: no class sub-folders with images (expected root/<class>/<image>)")
        super().__init__(paths, labels, transform)
        self.classes = classes


def open_dataset(root: str | os.PathLike, kind: str = "auto", split: str = "train", transform: Callable | None = None) -> LabelledImages:
    """Open ``root`` as SOP (``kind="sop"``) or folder-per-class (``"folder"``).

    ``"auto"`` picks SOP when ``root`` holds ``Ebay_{split}.txt``; ``split`` only applies
    to SOP.
    """
    root = os.fspath(root)
    if kind == "auto":
        kind = "sop" if os.path.isfile(os.path.join(root, SOP_FILES.get(split, ""))) else "folder"
    if kind == "sop":
        return StanfordOnlineProducts(root, split, transform)
    if kind == "folder":
        return ImageFolderClasses(root, transform)
    raise ValueError(f"dataset kind must be auto, sop or folder, got {kind!r}")


# ---------------------------------------------------------------------- sampler
class ClassBalancedBatchSampler(Sampler[list[int]]):
    """Batches of ``P`` distinct classes times ``K`` images each (``P K`` indices).

    Each epoch shuffles the eligible classes and walks through them ``P`` at a time; by
    default an epoch has ``floor(C / P)`` batches, so that every eligible class appears at
    most once (the last ``C mod P`` classes of the shuffled order wait for a later epoch).
    With ``batches_per_epoch`` larger than that, a new shuffle starts when fewer than ``P``
    classes are left. Inside a batch, a class with at least ``K`` images gives ``K``
    distinct ones drawn at random. A class with fewer than ``K`` images (but at least 2, so
    it still has a positive pair; a single-image class is never eligible) is, with
    ``small_classes="replace"``, filled up by drawing with replacement (each of its images
    appears once before any repeats); with ``"skip"`` it is never sampled.

    Batches list the ``K`` indices of the first class, then those of the second, and so
    on. Epoch ``e`` is drawn from ``numpy.random.default_rng([seed, e])``: the same seed and
    epoch give the same batches. The epoch advances by one at each ``iter()``, or is set
    with :meth:`set_epoch`.

    Args:
        labels: class of each dataset item.
        classes_per_batch: ``P``.
        samples_per_class: ``K``.
        batches_per_epoch: batches per ``iter()`` (default ``floor(C / P)``).
        small_classes: ``"replace"`` or ``"skip"`` (see above).
        seed: base seed.

    Shape:
        - labels: :math:`(N,)`.
        - Each batch: ``P * K`` dataset indices.
    """

    def __init__(
        self,
        labels: Sequence[int] | Tensor | np.ndarray,
        classes_per_batch: int,
        samples_per_class: int,
        *,
        batches_per_epoch: int | None = None,
        small_classes: str = "replace",
        seed: int = 0,
    ) -> None:
        if isinstance(labels, Tensor):
            labels = labels.detach().cpu().numpy()
        labels = np.asarray(labels).reshape(-1)
        if labels.size and not np.issubdtype(labels.dtype, np.integer):
            raise TypeError(f"labels must be integers, got dtype {labels.dtype}")
        if small_classes not in SMALL_CLASSES:
            raise ValueError(f"small_classes must be one of {SMALL_CLASSES}, got {small_classes!r}")
        p, k = int(classes_per_batch), int(samples_per_class)
        if p < 1 or k < 1:
            raise ValueError(f"classes_per_batch and samples_per_class must be >= 1, got {p}, {k}")
        order = np.argsort(labels, kind="stable")
        classes, starts, counts = np.unique(labels[order], return_index=True, return_counts=True)
        members = {int(c): order[s:s + n] for c, s, n in zip(classes, starts, counts, strict=True)}
        min_count = k if small_classes == "skip" else min(k, 2)
        self.members = {c: idx for c, idx in members.items() if len(idx) >= min_count}
        self.classes = np.array(sorted(self.members), dtype=np.int64)
        if len(self.classes) < p:
            raise ValueError(
                f"only {len(self.classes)} classes have enough images (>= {min_count}) for "
                f"{p} classes per batch (small_classes={small_classes!r})"
            )
        self.classes_per_batch, self.samples_per_class = p, k
        self.small_classes = small_classes
        self.batches_per_epoch = len(self.classes) // p if batches_per_epoch is None else int(batches_per_epoch)
        if self.batches_per_epoch < 1:
            raise ValueError(f"batches_per_epoch must be >= 1, got {batches_per_epoch}")
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Draw the next ``iter()`` as epoch ``epoch``."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.batches_per_epoch

    def _draw(self, rng: np.random.Generator, cls: int) -> np.ndarray:
        idx = self.members[cls]
        k = self.samples_per_class
        if len(idx) >= k:
            return rng.choice(idx, size=k, replace=False)
        reps = [rng.permutation(idx) for _ in range(-(-k // len(idx)))]
        return np.concatenate(reps)[:k]

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        self.epoch += 1
        p = self.classes_per_batch
        queue = rng.permutation(self.classes)
        pos = 0
        for _ in range(self.batches_per_epoch):
            if pos + p > len(queue):
                queue, pos = rng.permutation(self.classes), 0
            chosen = queue[pos:pos + p]
            pos += p
            yield [int(i) for c in chosen for i in self._draw(rng, int(c))]


# ---------------------------------------------------------------------- transforms
def train_transform(image_size: int = 224, scale: tuple[float, float] = (0.16, 1.0)) -> Callable[[Tensor], Tensor]:
    """Random resized crop to ``image_size`` and horizontal flip (torchvision v2).

    Shape:
        - Input: :math:`(3, H, W)` in ``[0, 1]``.
        - Output: :math:`(3, S, S)`, ``S = image_size``.
    """
    from torchvision.transforms import v2

    return v2.Compose([
        v2.RandomResizedCrop(image_size, scale=scale, antialias=True),
        v2.RandomHorizontalFlip(),
    ])


def eval_transform(image_size: int = 224, resize_size: int | None = None) -> Callable[[Tensor], Tensor]:
    """Resize the shorter side to ``resize_size`` (default ``round(image_size * 256 / 224)``),
    then centre-crop ``image_size``.

    Shape:
        - Input: :math:`(3, H, W)` in ``[0, 1]``.
        - Output: :math:`(3, S, S)`, ``S = image_size``.
    """
    from torchvision.transforms import v2

    resize = round(image_size * 256 / 224) if resize_size is None else int(resize_size)
    return v2.Compose([v2.Resize(resize, antialias=True), v2.CenterCrop(image_size)])
