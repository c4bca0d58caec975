"""`lit index` says what it is doing while the codebook and the index are built."""

import subprocess
import sys

import numpy as np
import torch

from lit.features import FeatureStore
from lit.types import LocalFeatures


def test_index_reports_each_kmeans_run_and_the_quantisation(tmp_path):
    rng = np.random.default_rng(0)
    with FeatureStore(tmp_path / "f.h5", "a", descriptor_dim=8, fingerprint="fp", root=str(tmp_path)) as st:
        for i in range(4):
            x = torch.from_numpy(rng.normal(size=(50, 8)).astype(np.float32))
            st.append(f"s/{i}.jpg", LocalFeatures(x, torch.ones(50), torch.ones(50), torch.arange(50), torch.zeros(50, 2)))
    out = subprocess.run([sys.executable, "-m", "lit", "index", str(tmp_path / "f.h5"), "--out", str(tmp_path / "i.h5"),
                          "--device", "cpu"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "k-means run 1/4 done in" in out.stderr and "k-means run 4/4 done in" in out.stderr
    assert "quantising 200 descriptors of 4 images into the index" in out.stderr
