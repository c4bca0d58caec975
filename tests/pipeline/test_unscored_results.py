"""Search lists stop at the last positive score unless asked to keep the unscored images."""

import numpy as np
import torch

from lit import pipeline
from lit.features import FeatureStore
from lit.types import LocalFeatures


def _feature_file(path):
    rng = np.random.default_rng(0)
    feats = []
    with FeatureStore(path, "a", descriptor_dim=8, fingerprint="fp") as st:
        for name, centre in (("a/1.jpg", 5.0), ("a/2.jpg", 5.0), ("b/1.jpg", -5.0), ("b/2.jpg", -5.0)):
            x = torch.from_numpy(rng.normal(size=(30, 8)).astype(np.float32) + centre)
            f = LocalFeatures(x, torch.ones(30), torch.ones(30), torch.arange(30), torch.zeros(30, 2))
            st.append(name, f)
            feats.append(f)
    return feats


def test_images_sharing_no_visual_word_are_not_ranked_by_default(tmp_path):
    feats = _feature_file(tmp_path / "f.h5")
    index, info = pipeline.build_index(tmp_path / "f.h5", size=16, seed=0)
    (res,) = pipeline.search(index, info, feats[:1], ["a/1.jpg"], topk=None, exclude_self=True)
    assert [h.name for h in res.hits] == ["a/2.jpg"] and res.hits[0].score > 0
    (full,) = pipeline.search(index, info, feats[:1], ["a/1.jpg"], topk=None, exclude_self=True, keep_unscored=True)
    assert [h.name for h in full.hits][:1] == ["a/2.jpg"] and len(full.hits) == 3
    assert [h.score for h in full.hits[1:]] == [0.0, 0.0]
