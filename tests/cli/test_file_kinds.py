"""A feature file given where an index is expected says what it is and what to run."""

import subprocess
import sys

import torch

from lit.features import FeatureStore
from lit.types import LocalFeatures


def test_search_on_a_feature_file_says_to_run_lit_index_first(tmp_path):
    with FeatureStore(tmp_path / "f.h5", "a", descriptor_dim=8, fingerprint="fp", root=str(tmp_path)) as st:
        st.append("s/1.jpg", LocalFeatures(torch.randn(5, 8), torch.ones(5), torch.ones(5), torch.arange(5)))
    out = subprocess.run([sys.executable, "-m", "lit", "search", str(tmp_path / "f.h5"), "--query-features",
                          str(tmp_path / "f.h5"), "--device", "cpu"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 2
    assert "this is a feature file (from `lit extract`), not an index" in out.stderr and "lit index" in out.stderr
