"""Small labelled image datasets drawn on the fly for the metric-learning tests (also used by
tests/test_device.py): shapes and textures with random colours, positions and noise.

Import as ``from metric.shapes import ...`` (``tests`` is on the path).
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image, ImageDraw

TINY = "test_resnet"  # timm's 0.4M-parameter test ResNet: milliseconds per step on a CPU


def draw_shape(cls: int, rng: np.random.Generator, size: int = 64) -> Image.Image:
    """Class = shape or texture; colours, position, size and noise are nuisances."""
    bg = tuple(int(v) for v in rng.integers(0, 256, 3))
    fg = tuple(int(v) for v in rng.integers(0, 256, 3))
    while sum(abs(a - b) for a, b in zip(bg, fg, strict=True)) < 150:
        fg = tuple(int(v) for v in rng.integers(0, 256, 3))
    img = Image.new("RGB", (size, size), bg)
    d = ImageDraw.Draw(img)
    r = rng.uniform(0.25, 0.4) * size
    cx, cy = rng.uniform(r, size - r, 2)
    box = [cx - r, cy - r, cx + r, cy + r]
    w = max(2, size // 12)
    if cls == 0:
        d.ellipse(box, fill=fg)
    elif cls == 1:
        d.rectangle(box, fill=fg)
    elif cls == 2:
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fg)
    elif cls == 3:
        d.rectangle([cx - r, cy - w, cx + r, cy + w], fill=fg)
        d.rectangle([cx - w, cy - r, cx + w, cy + r], fill=fg)
    elif cls == 4:
        d.ellipse(box, outline=fg, width=w)
    elif cls == 5:
        for y in range(0, size, 2 * w):
            d.rectangle([0, y, size, y + w - 1], fill=fg)
    elif cls == 6:
        for x in range(0, size, 2 * w):
            d.rectangle([x, 0, x + w - 1, size], fill=fg)
    else:
        for y in range(0, size, 2 * w):
            for x in range(0, size, 2 * w):
                o = w if (y // (2 * w)) % 2 else 0
                d.rectangle([x + o, y, x + o + w - 1, y + w - 1], fill=fg)
    arr = np.asarray(img).astype(np.float32) + rng.normal(0, 8, (size, size, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def make_folder_dataset(root, per_class: int, seed: int, classes: int = 8) -> str:
    rng = np.random.default_rng(seed)
    for c in range(classes):
        os.makedirs(os.path.join(root, f"class{c}"), exist_ok=True)
        for i in range(per_class):
            draw_shape(c, rng).save(os.path.join(root, f"class{c}", f"{i:03d}.png"))
    return str(root)


def make_sop_dataset(root, classes: tuple[int, int] = (6, 4), per_class: int = 3, seed: int = 0) -> str:
    """SOP layout: Ebay_train.txt / Ebay_test.txt, images in <category>_final/ folders."""
    rng = np.random.default_rng(seed)
    supers = ["bicycle", "chair"]
    image_id, class_id = 1, 1
    for split, n_classes in zip(("train", "test"), classes, strict=True):
        lines = ["image_id class_id super_class_id path"]
        for _ in range(n_classes):
            sup = class_id % 2
            folder = f"{supers[sup]}_final"
            os.makedirs(os.path.join(root, folder), exist_ok=True)
            for j in range(per_class):
                rel = f"{folder}/{class_id:06d}_{j}.JPG"
                draw_shape(class_id % 8, rng).save(os.path.join(root, rel), format="JPEG")
                lines.append(f"{image_id} {class_id} {sup + 1} {rel}")
                image_id += 1
            class_id += 1
        with open(os.path.join(root, f"Ebay_{split}.txt"), "w") as f:
            f.write("\n".join(lines) + "\n")
    return str(root)
