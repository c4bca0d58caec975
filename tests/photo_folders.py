"""Folders of small random photos (PNG, noise), for tests that extract features from files."""

import os

import numpy as np
from PIL import Image


def random_photos(folder, n, size=(64, 48), name="p{i:02d}.png"):
    """``n`` noise photos of ``size`` (width, height) in ``folder`` (created), named
    ``name.format(i=i)``, from one fixed seed; returns their paths in order."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        path = folder / name.format(i=i)
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


LATIN1 = os.fsdecode(b"caf\xe9.jpg")  # how Python sees a file name in Latin-1 (not UTF-8) on a UTF-8 system
