"""Fixtures of the metric-learning tests."""

from __future__ import annotations

import pytest
import torch
from metric.shapes import make_folder_dataset


@pytest.fixture
def one_thread():
    """Tiny models run fastest on one thread, and do not stall on a busy shared runner."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """8 classes of shapes/textures with random colours: 24 train and 12 test images each."""
    base = tmp_path_factory.mktemp("shapes")
    return make_folder_dataset(base / "train", 24, seed=0), make_folder_dataset(base / "test", 12, seed=100)
