"""`lit evaluate --folder`: retrieval quality on the user's own folder-per-scene photos."""

import json
import os
import subprocess
import sys

import numpy as np
from PIL import Image

from lit.models.checkpoint import save_checkpoint


def run(*args):
    return subprocess.run([sys.executable, "-m", "lit", *map(str, args)], capture_output=True, text=True, timeout=300)


def _photos(folder, n, seed):
    folder.mkdir(parents=True)
    base = np.random.default_rng(seed).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    for i in range(n):  # photos of one scene: the same picture, slightly noisy
        noise = np.random.default_rng(100 * seed + i).integers(-10, 10, base.shape)
        Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8)).save(folder / f"{i}.png")


def test_folder_per_scene_gives_map_precision_and_per_scene_table(tmp_path, tiny_model):
    save_checkpoint(tiny_model, tmp_path / "tiny.pt")
    for s in range(2):
        _photos(tmp_path / "mine" / f"scene{s}", 2, s)
    _photos(tmp_path / "other" / "x", 3, 7)
    proc = run("evaluate", "--folder", tmp_path / "mine", "--model", tmp_path / "tiny.pt", "--device", "cpu",
               "--codebook-photos", tmp_path / "other", "--codebook-size", 8, "--json", tmp_path / "r.json")
    assert proc.returncode == 0, proc.stderr
    assert "mAP" in proc.stdout and "mP@5" in proc.stdout and "scene0" in proc.stdout and "scene1" in proc.stdout
    out = json.loads((tmp_path / "r.json").read_text())
    assert out["images"] == 4 and out["scenes"] == 2 and out["queries"] == 4 and out["codebook_images"] == 3
    assert 0 <= out["map"] <= 100 and set(out["per_scene"]) == {"scene0", "scene1"} and "mp@10" in out


def test_missing_dataset_says_which_command_downloads_it(tmp_path):
    proc = run("evaluate", "--dataset", "roxford5k", "--data-root", tmp_path, "--device", "cpu")
    assert proc.returncode == 2
    assert f"lit download roxford5k --root {tmp_path}" in proc.stderr and "lit.data" not in proc.stderr
    proc = run("evaluate")
    assert proc.returncode == 2 and "--folder" in proc.stderr


def test_default_model_is_the_shipped_one():
    proc = subprocess.run([sys.executable, "-m", "lit", "evaluate", "--help"], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "COLUMNS": "400"})
    assert "(default: lit-effl0;" in proc.stdout
