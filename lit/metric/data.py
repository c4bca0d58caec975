"""Labelled image datasets for metric learning, the class-balanced P x K sampler (on
pytorch-metric-learning's MPerClassSampler), transforms.

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
from pytorch_metric_learning.samplers import MPerClassSampler
from pytorch_metric_learning.utils import common_functions as pml_common
from torch import Tensor
from torch.utils.data import Dataset

from .._checks import check_choice, check_int
from .._image import list_images, open_image, pil_to_tensor
from ..errors import UsageError
from .options import DATASET_KINDS, SMALL_CLASSES

SOP_HEADER = ("image_id", "class_id", "super_class_id", "path")
SOP_FILES = {"train": "Ebay_train.txt", "test": "Ebay_test.txt"}


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
        UsageError: missing file, wrong header, or a malformed row (the message gives the
            line number).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UsageError(f"{path}: no such SOP list file")
    root = os.path.dirname(path) if root is None else os.fspath(root)
    image_ids, class_ids, super_ids, paths = [], [], [], []
    with open(path, encoding="utf-8") as f:
        header = f.readline().split()
        if tuple(header) != SOP_HEADER:
            raise UsageError(f"{path}: line 1 must be the header {' '.join(SOP_HEADER)!r}, got {' '.join(header)!r}")
        for lineno, line in enumerate(f, start=2):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 4:
                raise UsageError(f"{path}:{lineno}: expected 4 columns ({' '.join(SOP_HEADER)}), got {len(parts)}")
            try:
                iid, cid, sid = (int(v) for v in parts[:3])
            except ValueError:
                raise UsageError(f"{path}:{lineno}: image_id, class_id and super_class_id must be integers: {line.strip()!r}") from None
            image_ids.append(iid)
            class_ids.append(cid)
            super_ids.append(sid)
            paths.append(os.path.join(root, parts[3]))
    if not paths:
        raise UsageError(f"{path}: no images listed")
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
            raise UsageError(f"{len(paths)} paths for {labels.numel()} labels")
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
            raise UsageError(f"split must be one of {tuple(SOP_FILES)}, got {split!r}")
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
            raise UsageError(f"{root}: not a directory")
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
            raise UsageError(f"{root}: no class sub-folders with images (expected root/<class>/<image>)")
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
    check_choice(kind, "dataset kind", DATASET_KINDS)
    if kind == "sop":
        return StanfordOnlineProducts(root, split, transform)
    return ImageFolderClasses(root, transform)


# ---------------------------------------------------------------------- sampler
class ClassBalancedSampler(MPerClassSampler):
    """Class-balanced ``P x K`` batches: pytorch-metric-learning's ``MPerClassSampler`` on the
    classes that can give a positive pair, drawn from a seeded generator per epoch.

    Use it with ``DataLoader(dataset, batch_size=P * K, sampler=sampler)``: each consecutive
    run of ``P K`` indices is one batch of ``P`` distinct classes with ``K`` images each,
    listed class by class. For every batch, PML shuffles the eligible classes and takes the
    first ``P`` (so a class can be in several batches of an epoch, never twice in one), then
    draws ``K`` of the class's images without replacement, or with replacement when it has
    fewer than ``K``.

    Eligible classes: with ``small_classes="replace"``, every class of at least 2 images (a
    single image has no positive); with ``"skip"``, only classes of at least ``K`` images.

    Epoch ``e`` is drawn from ``numpy.random.default_rng([seed, e])`` (PML draws from
    ``pytorch_metric_learning.utils.common_functions.NUMPY_RANDOM``, which is set to that
    generator while the epoch's list is built and restored afterwards): the same seed and
    epoch give the same batches. The epoch advances by one at each ``iter()``, or is set with
    :meth:`set_epoch`.

    Args:
        labels: class of each dataset item.
        classes_per_batch: ``P``.
        samples_per_class: ``K``.
        batches_per_epoch: batches per ``iter()`` (default ``floor(C / P)`` for ``C``
            eligible classes).
        small_classes: ``"replace"`` or ``"skip"`` (see above).
        seed: base seed.

    Attributes:
        classes: the eligible classes, sorted.
        batch_size: ``P K``.
        batches_per_epoch: batches per ``iter()``; ``len(sampler)`` counts indices.

    Shape:
        - labels: :math:`(N,)`.
        - Each batch: ``P K`` dataset indices.
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
        check_choice(small_classes, "small_classes", SMALL_CLASSES)
        p = check_int(classes_per_batch, "classes_per_batch", minimum=1)
        k = check_int(samples_per_class, "samples_per_class", minimum=1)
        classes, counts = np.unique(labels, return_counts=True)
        min_count = k if small_classes == "skip" else min(k, 2)
        self.classes = classes[counts >= min_count].astype(np.int64)
        if len(self.classes) < p:
            raise UsageError(
                f"only {len(self.classes)} classes have enough images (>= {min_count}) for "
                f"{p} classes per batch (small_classes={small_classes!r})"
            )
        if batches_per_epoch is None:
            batches_per_epoch = len(self.classes) // p
        self.batches_per_epoch = check_int(batches_per_epoch, "batches_per_epoch", minimum=1)
        self.items = np.flatnonzero(np.isin(labels, self.classes))  # dataset index of each position
        super().__init__(labels[self.items], m=k, batch_size=p * k, length_before_new_iter=self.batches_per_epoch * p * k)
        self.classes_per_batch, self.samples_per_class = p, k
        self.small_classes = small_classes
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Draw the next ``iter()`` as epoch ``epoch``."""
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng([self.seed, self.epoch])
        self.epoch += 1
        self.labels = sorted(self.labels_to_indices)  # PML shuffles this list in place
        before = pml_common.NUMPY_RANDOM
        pml_common.NUMPY_RANDOM = rng
        try:
            positions = list(super().__iter__())
        finally:
            pml_common.NUMPY_RANDOM = before
        return iter(self.items[positions].tolist())


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
