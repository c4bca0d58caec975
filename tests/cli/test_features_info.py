"""`lit features info` shows what a feature file holds: model, per-image counts, text embeddings."""

import subprocess
import sys

import numpy as np
from PIL import Image

from lit.pipeline import extract_to_file


def test_info_shows_the_model_the_feature_cap_and_the_text_embeddings(tmp_path, tiny_model):
    for i in range(2):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    tiny_model.source = "tiny-test-model"
    extract_to_file(tiny_model, sorted(tmp_path.glob("*.png")), tmp_path / "f.h5", progress=False, features_num=50)
    out = subprocess.run([sys.executable, "-m", "lit", "features", "info", str(tmp_path / "f.h5")], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "model: tiny-test-model" in out.stdout
    assert "at most 50 features per image" in out.stdout and "(24-24 per image)" in out.stdout  # 8 templates x 3 scales
    assert "text search embeddings: none" in out.stdout
