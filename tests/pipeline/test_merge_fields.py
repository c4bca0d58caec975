"""Merging feature files keeps every per-image field, and a missing field is explained."""

import numpy as np
import pytest
import torch

from lit.errors import FeatureFileError
from lit.features import FeatureStore, feature_file_info
from lit.pipeline import merge_feature_files
from lit.types import LocalFeatures


def _feats(k=5, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return LocalFeatures(torch.randn(k, d, generator=g), torch.ones(k), torch.ones(k), torch.arange(k),
                         torch.zeros(k, 2))


def _file(path, root, names, tower="effl0", seed=0, settings=None):
    with FeatureStore(path, "a", descriptor_dim=8, fingerprint="fp", root=str(root), settings=settings) as st:
        for i, n in enumerate(names):
            st.append(n, _feats(seed=seed + i))
        if tower:
            st.write_embeddings(list(range(len(names))), tower, np.arange(len(names) * 4, dtype=np.float32).reshape(-1, 4)
                                + 100 * seed)


def test_merge_keeps_the_text_search_embeddings_of_every_image(tmp_path):
    _file(tmp_path / "a.h5", tmp_path / "photos", ["church/1.jpg", "church/2.jpg"], seed=0)
    _file(tmp_path / "b.h5", tmp_path / "photos2", ["graffiti/1.jpg", "church/2.jpg"], seed=10)
    summary = merge_feature_files([tmp_path / "a.h5", tmp_path / "b.h5"], tmp_path / "all.h5")
    assert summary.embeddings == {"effl0": 4}
    with FeatureStore(tmp_path / "all.h5") as m:
        assert m.names == ["photos/church/1.jpg", "photos/church/2.jpg", "photos2/graffiti/1.jpg", "photos2/church/2.jpg"]
        tower, emb, valid = m.embeddings()
        assert tower == "effl0" and valid.all()
        np.testing.assert_array_equal(emb[2], np.arange(4, dtype=np.float32) + 1000)  # b's first image
        np.testing.assert_array_equal(emb[1], np.arange(4, 8, dtype=np.float32))


def test_merge_marks_images_without_embeddings_as_such(tmp_path):
    _file(tmp_path / "a.h5", tmp_path / "p", ["s/1.jpg"])
    _file(tmp_path / "b.h5", tmp_path / "p", ["s/2.jpg"], tower=None)
    merge_feature_files([tmp_path / "a.h5", tmp_path / "b.h5"], tmp_path / "all.h5")
    with FeatureStore(tmp_path / "all.h5") as m:
        assert m.embeddings()[2].tolist() == [True, False]
    assert feature_file_info(tmp_path / "all.h5")["text_embeddings"] == {"effl0": 1}


@pytest.mark.parametrize("settings, cause", [
    ({"scales": [1.0], "features_num": 5, "image_size": 64, "text_tower": None}, "--text-model none"),
    ({"scales": [1.0], "features_num": 5, "image_size": 64, "text_tower": "effl0"}, "were lost"),
    (None, "did not record them"),
])
def test_missing_embeddings_give_the_cause_the_file_records(tmp_path, settings, cause):
    _file(tmp_path / "a.h5", tmp_path, ["s/1.jpg"], tower=None, settings=settings)
    with FeatureStore(tmp_path / "a.h5") as st, pytest.raises(FeatureFileError, match=cause):
        st.embeddings()
