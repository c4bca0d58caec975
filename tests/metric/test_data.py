"""Datasets (SOP lists, folder per class), transforms, and the class-balanced P x K sampler
(lit's use of pytorch-metric-learning's MPerClassSampler)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from metric.shapes import make_folder_dataset, make_sop_dataset
from torch.utils.data import DataLoader

from lit.errors import UsageError
from lit.metric import (
    ClassBalancedSampler,
    ImageFolderClasses,
    StanfordOnlineProducts,
    eval_transform,
    open_dataset,
    read_sop_list,
    train_transform,
)


def test_read_sop_list_parses_the_text_format(tmp_path):
    root = make_sop_dataset(tmp_path / "sop")
    lst = read_sop_list(os.path.join(root, "Ebay_test.txt"))
    assert lst.image_ids.tolist() == list(range(19, 31))
    assert lst.class_ids.tolist() == [7, 7, 7, 8, 8, 8, 9, 9, 9, 10, 10, 10]
    assert set(lst.super_class_ids.tolist()) == {1, 2}
    assert lst.paths[0] == os.path.join(root, "chair_final/000007_0.JPG")
    ds = StanfordOnlineProducts(root, "train", transform=eval_transform(32))
    assert len(ds) == 18 and ds.num_classes == 6 and ds.labels[:4].tolist() == [1, 1, 1, 2]
    image, label = ds[4]
    assert image.shape == (3, 32, 32) and label == 2
    assert isinstance(open_dataset(root, split="test"), StanfordOnlineProducts)


def test_read_sop_list_reports_bad_files(tmp_path):
    bad = tmp_path / "Ebay_train.txt"
    bad.write_text("id class path\n1 1 a.jpg\n")
    with pytest.raises(ValueError, match="header"):
        read_sop_list(bad)
    bad.write_text("image_id class_id super_class_id path\n1 1 1 a.jpg\n2 x 1 b.jpg\n")
    with pytest.raises(ValueError, match=":3:"):
        read_sop_list(bad)
    bad.write_text("image_id class_id super_class_id path\n1 1 1\n")
    with pytest.raises(ValueError, match="4 columns"):
        read_sop_list(bad)
    with pytest.raises(ValueError, match="split"):
        StanfordOnlineProducts(tmp_path, "val")


def test_image_folder_classes(tmp_path):
    make_folder_dataset(tmp_path / "f", 2, seed=0, classes=3)
    (tmp_path / "f" / "empty").mkdir()
    ds = ImageFolderClasses(tmp_path / "f", transform=train_transform(24))
    assert ds.classes == ["class0", "class1", "class2"]
    assert ds.labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert ds[3][0].shape == (3, 24, 24) and ds[3][1] == 1
    assert isinstance(open_dataset(tmp_path / "f"), ImageFolderClasses)
    with pytest.raises(ValueError):
        ImageFolderClasses(tmp_path / "f" / "empty")


def test_eval_transform_resizes_then_centre_crops():
    image = torch.rand(3, 100, 200)
    out = eval_transform(56)(image)
    assert out.shape == (3, 56, 56)
    assert torch.allclose(eval_transform(50, 50)(torch.ones(3, 60, 80)), torch.ones(3, 50, 50))


# ---------------------------------------------------------------------- sampler
def batches(sampler: ClassBalancedSampler) -> list[list[int]]:
    """One epoch as the training loop sees it: a DataLoader of P K indices per batch."""
    loader = DataLoader(list(range(10_000)), batch_size=sampler.batch_size, sampler=sampler)
    return [b.tolist() for b in loader]


def test_sampler_yields_p_by_k_batches_of_distinct_classes():
    labels = np.repeat(np.arange(10), [5, 6, 4, 7, 5, 4, 8, 5, 4, 6])
    sampler = ClassBalancedSampler(labels, 3, 4, seed=1)
    epoch = batches(sampler)
    assert len(epoch) == sampler.batches_per_epoch == 10 // 3 and len(sampler) == 3 * 12
    for batch in epoch:
        assert len(batch) == 12
        blabels = labels[batch]
        classes, counts = np.unique(blabels, return_counts=True)
        assert len(classes) == 3 and (counts == 4).all()
        assert len(set(batch)) == 12  # every class has >= K images: no repeats
        assert all(len(set(blabels[i * 4:(i + 1) * 4])) == 1 for i in range(3))  # grouped by class


def test_sampler_is_seeded_per_epoch_and_leaves_pml_random_state_alone():
    from pytorch_metric_learning.utils import common_functions

    before = common_functions.NUMPY_RANDOM
    labels = np.repeat(np.arange(12), 5)
    a = ClassBalancedSampler(labels, 4, 2, seed=3)
    b = ClassBalancedSampler(labels, 4, 2, seed=3)
    first_a, first_b = list(a), list(b)
    assert first_a == first_b
    second = list(a)
    assert second != first_a  # epoch 1 differs from epoch 0
    a.set_epoch(0)
    assert list(a) == first_a  # and epoch 0 again is epoch 0, whatever ran in between
    a.set_epoch(1)
    assert list(a) == second
    assert list(ClassBalancedSampler(labels, 4, 2, seed=4)) != first_a
    assert common_functions.NUMPY_RANDOM is before


def test_sampler_small_classes_replace_or_skip():
    labels = np.array([0] * 6 + [1] * 2 + [2] * 5 + [3] * 1)
    replace = ClassBalancedSampler(labels, 3, 4, batches_per_epoch=20, small_classes="replace")
    assert replace.classes.tolist() == [0, 1, 2]  # a single-image class has no positive
    for batch in batches(replace):
        lab = labels[batch]
        assert (np.unique(lab, return_counts=True)[1] == 4).all()
        assert set(i for i in batch if labels[i] == 1) <= {6, 7}  # the 2-image class, drawn with replacement
        assert 13 not in batch
    skip = ClassBalancedSampler(labels, 2, 4, small_classes="skip")
    assert skip.classes.tolist() == [0, 2]
    with pytest.raises(UsageError, match="classes"):
        ClassBalancedSampler(labels, 3, 4, small_classes="skip")
    with pytest.raises(ValueError):
        ClassBalancedSampler(labels, 2, 4, small_classes="drop")
    with pytest.raises(TypeError):
        ClassBalancedSampler(labels.astype(float), 2, 2)


def test_sampler_batches_per_epoch_draws_classes_afresh_for_each_batch():
    labels = np.repeat(np.arange(5), 3)
    epoch = batches(ClassBalancedSampler(labels, 2, 2, batches_per_epoch=7))
    assert len(epoch) == 7
    for batch in epoch:
        assert len(set(labels[batch])) == 2
    assert len({c for batch in epoch for c in labels[batch]}) == 5


def test_sampler_maps_positions_back_to_dataset_indices():
    labels = torch.tensor([7, 3, 3, 9, 7, 5, 3, 7])  # class 9 and 5: one image each, never drawn
    sampler = ClassBalancedSampler(labels, 2, 2, batches_per_epoch=5)
    for batch in batches(sampler):
        assert not {3, 5} & set(batch)
        lab = labels[batch].tolist()
        assert lab[0] == lab[1] and lab[2] == lab[3] and lab[0] != lab[2]
