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


def texture(rng, size=(96, 72)):
    """A smooth random colour texture of ``size`` (width, height): a 'landmark' (H x W x 3 uint8)."""
    small = rng.random((6, 8, 3))
    img = Image.fromarray((small * 255).astype(np.uint8)).resize(size, Image.BICUBIC)
    return np.asarray(img)


def landmark_view(base, rng):
    """Another 'photo' of the landmark ``base``: shifted crop plus noise."""
    h, w, _ = base.shape
    dx, dy = rng.integers(0, 8, 2)
    crop = base[dy:h - 8 + dy, dx:w - 8 + dx].astype(np.float64)
    crop = crop + rng.normal(0, 6, crop.shape)
    return Image.fromarray(np.clip(crop, 0, 255).astype(np.uint8)).resize((w, h))


def two_scene_photos(folder):
    """Two scenes of two overlapping crops each (a/1.jpg, a/2.jpg: Sacre-Coeur; b/...: a
    terrace), 160 x 120 cuts of the bundled photos. Returns ``folder``."""
    from paths import PHOTOS

    for scene, src in (("a", "sacre_coeur/sacre_coeur1.jpg"), ("b", "terrace/terrace0.jpg")):
        (folder / scene).mkdir(parents=True)
        img = Image.open(os.path.join(PHOTOS, src)).convert("RGB").resize((160, 120))
        img.crop((0, 0, 140, 110)).save(folder / scene / "1.jpg")
        img.crop((15, 8, 160, 120)).save(folder / scene / "2.jpg")
    return folder


def revisited_dataset(root, rng, landmarks=3, views=4, name="tinyox"):
    """A tiny dataset in the revisited benchmark's on-disk layout under ``root/name``:
    ``landmarks`` textures with ``views`` database photos and one query each (jpg/), and
    gnd_<name>.pkl whose easy / hard / junk lists are the first ``views - 2``, the next and
    the last photos of the query's landmark. Drawn from ``rng`` in that order."""
    import pickle

    jpg = root / name / "jpg"
    jpg.mkdir(parents=True)
    bases = [texture(rng) for _ in range(landmarks)]
    imlist, labels, qimlist, gnd = [], [], [], []
    for li, base in enumerate(bases):
        for k in range(views):
            landmark_view(base, rng).save(jpg / f"land{li}_{k}.jpg", quality=95)
            imlist.append(f"land{li}_{k}")
            labels.append(li)
    for li, base in enumerate(bases):
        landmark_view(base, rng).save(jpg / f"query{li}.jpg", quality=95)
        qimlist.append(f"query{li}")
        same = [i for i, lab in enumerate(labels) if lab == li]
        gnd.append({"bbx": np.array([4.0, 2.0, 90.0, 70.0]), "easy": same[:views - 2],
                    "hard": same[views - 2:views - 1], "junk": same[views - 1:]})
    with open(root / name / f"gnd_{name}.pkl", "wb") as f:
        pickle.dump({"imlist": imlist, "qimlist": qimlist, "gnd": gnd}, f)
    return root
