"""Images outside an existing feature file's root are refused with what to do instead."""

import numpy as np
import pytest
from PIL import Image

from lit.errors import FeatureFileError
from lit.pipeline import extract_to_file


def _photo(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(path)
    return path


def test_images_outside_the_stored_root_point_to_a_new_file_and_a_merge(tmp_path, tiny_model):
    extract_to_file(tiny_model, [_photo(tmp_path / "photos" / "a" / "1.png")], tmp_path / "f.h5", progress=False)
    with pytest.raises(FeatureFileError, match="outside .*photos.a, the folder that the names") as err:
        extract_to_file(tiny_model, [_photo(tmp_path / "photos2" / "b" / "1.png")], tmp_path / "f.h5", progress=False)
    assert "--root" not in err.value.cli and "`lit features merge" in err.value.cli and "NEW.h5" in err.value.cli
    assert "merge_feature_files" in str(err.value)
