"""The scene of a photo (for correct / incorrect marks) is the folder that holds it."""

from PIL import Image

from lit import pipeline
from lit.index_file import IndexInfo


def test_scene_is_the_folder_holding_the_photo():
    assert pipeline.scene_of("photos/church/1.jpg") == "church"
    assert pipeline.scene_of("photos2/church/2.jpg") == pipeline.scene_of("church/3.jpg")
    assert pipeline.scene_of("photos/graffiti/1.jpg") != pipeline.scene_of("photos/church/1.jpg")
    assert pipeline.scene_of("1.jpg") is None


def test_a_query_given_as_a_file_keeps_its_folder(tmp_path, tiny_model):
    folder = tmp_path / "photos" / "wxbs-dh"
    folder.mkdir(parents=True)
    Image.new("RGB", (64, 48), (120, 30, 200)).save(folder / "02.jpg")
    info = IndexInfo(names=["wxbs-dh/01.jpg"], image_root=None, fingerprint=None)
    q = pipeline.queries_from_images(tiny_model, [str(folder / "02.jpg")], info)
    assert q.names == ["wxbs-dh/02.jpg"] and q.root == str(tmp_path / "photos")
    q = pipeline.queries_from_images(tiny_model, [str(folder)], info)  # a folder: names relative to it, as before
    assert q.names == ["02.jpg"]
