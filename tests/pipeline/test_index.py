"""lit.pipeline.index: training features of another model are refused unless forced."""

import pytest
from feature_files import write_feature_file

from lit import pipeline


def test_train_features_of_another_model_are_refused(tmp_path):
    write_feature_file(tmp_path / "a.h5", "fp-a")
    write_feature_file(tmp_path / "b.h5", "fp-b", seed=1)
    with pytest.raises(pipeline.FingerprintError, match="training features"):
        pipeline.build_index(tmp_path / "a.h5", size=8, train_features=tmp_path / "b.h5")
    index, info = pipeline.build_index(tmp_path / "a.h5", size=8, train_features=tmp_path / "b.h5", force=True)
    assert info.codebook_source.endswith("b.h5") and info.codebook_descriptors == 160
