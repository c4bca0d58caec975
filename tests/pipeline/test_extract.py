"""lit.pipeline.extract: image names relative to their root, names that are not UTF-8 round-trip."""

import json

import pytest
from photo_folders import LATIN1

from lit._image import (
    decode_name,
    display_name,
    encode_name,
)
from lit.pipeline import common_root, image_names


def test_names_round_trip_helpers(tmp_path):
    assert display_name(LATIN1) == "caf\\xe9.jpg" and display_name("été.jpg") == "été.jpg"
    assert encode_name(LATIN1) == b"caf\xe9.jpg" and decode_name(b"caf\xe9.jpg") == LATIN1
    json.dumps(display_name(LATIN1)).encode("utf-8")  # valid in JSON and CSV
    d = tmp_path / "r"
    (d / "x").mkdir(parents=True)
    assert common_root([d]) == str(d) and common_root([d / "x", d / "y.jpg"]) == str(d)
    assert image_names([d / "x" / "a.jpg"], d) == ["x/a.jpg"]
    with pytest.raises(ValueError, match="not under the root folder"):
        image_names([tmp_path / "a.jpg"], d)
