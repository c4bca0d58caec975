"""Helpers of the training tests: synthetic photo folders and a tiny training configuration."""

import os

import numpy as np
from PIL import Image, ImageDraw


def make_photos(folder, n=50, size=(64, 51), seed=0, scenes=0):
    """``n`` synthetic photos: a smooth random background with random ellipses and boxes."""
    rng = np.random.default_rng(seed)
    paths = []
    w, h = size
    for i in range(n):
        low = rng.random((4, 5, 3))
        img = Image.fromarray((low * 255).astype(np.uint8)).resize((w, h), Image.BICUBIC)
        draw = ImageDraw.Draw(img)
        for _ in range(rng.integers(3, 7)):
            x0, y0 = rng.integers(0, w - 10), rng.integers(0, h - 10)
            x1, y1 = x0 + rng.integers(8, w // 2), y0 + rng.integers(8, h // 2)
            colour = tuple(int(c) for c in rng.integers(0, 256, 3))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x0, y0, x1, y1], fill=colour)
        sub = os.path.join(folder, f"scene{i % scenes:02d}") if scenes else folder
        os.makedirs(sub, exist_ok=True)
        path = os.path.join(sub, f"photo{i:03d}.png")
        img.save(path)
        paths.append(path)
    return paths


def tiny_config_dict(root, **sections):
    d = {
        "model": {
            "backbone": {"name": "resnet18", "out_index": 3},
            "lit": {"T": 2, "N": 8, "dim": 32},
            "reduction_dim": 16,
            "runtime": {"image_size": 64},
        },
        "init": {"whitening_images": 8},
        "data": {
            "source": "folder", "root": str(root), "image_size": 48, "queries_per_epoch": 10,
            "pool_size": 30, "num_negatives": 2, "val_images": 6, "val_views": 1,
        },
        "optim": {"epochs": 1, "lr": 3e-4},
        "validate_every": 0,
        "seed": 0,
    }
    for key, value in sections.items():
        d.setdefault(key, {})
        if isinstance(value, dict):
            d[key].update(value)
        else:
            d[key] = value
    return d
