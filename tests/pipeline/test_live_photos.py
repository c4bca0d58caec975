"""Live collections on real photos: `LiveIndex.add` extracts new photos with the index's model
and settings, skips identical ones, replaces changed ones, and makes them findable by image
(exactly as a rebuild with the same codebook) and by words at once."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import lit
from lit.errors import FingerprintError
from lit.features import FeatureStore, open_features
from lit.index_file import load_index, read_text
from lit.pipeline import extract_to_file, load_codebook, make_index
from lit.pipeline.live import LiveIndex
from lit.pipeline.search import search

PHOTOS = os.path.join(os.path.dirname(lit.__file__), "assets", "photos")


@pytest.fixture(scope="module")
def text_model():
    import lit.text

    return lit.text.load_text_model()


@pytest.fixture(scope="module")
def model():
    from lit.models import BackboneConfig, LITConfig, ModelConfig, RuntimeConfig, SuperFeatureModel

    torch.manual_seed(0)
    cfg = ModelConfig(backbone=BackboneConfig("resnet18", 3), lit=LITConfig(T=2, N=8, dim=32), reduction_dim=16,
                      runtime=RuntimeConfig(image_size=96, features_num=20, scales=(1.0, 0.707, 0.5)))
    return SuperFeatureModel(cfg).eval()


@pytest.fixture(scope="module")
def built(tmp_path_factory, model, text_model):
    """Photos (three indexed, two new) and the index of the three with text embeddings,
    built once; each test works on a copy of the index and adds photos of its own names."""
    from skimage import data

    tmp = tmp_path_factory.mktemp("live-photos")
    photos = tmp / "photos"
    (photos / "new").mkdir(parents=True)
    for src in ("sacre_coeur/sacre_coeur1.jpg", "sacre_coeur/sacre_coeur2.jpg", "terrace/terrace0.jpg"):
        Image.open(os.path.join(PHOTOS, src)).convert("RGB").resize((200, 150)).save(photos / os.path.basename(src))
    Image.fromarray(data.chelsea()).resize((200, 150)).save(photos / "new" / "cat.png")
    Image.fromarray(data.coffee()).resize((200, 150)).save(photos / "new" / "coffee.png")
    index = tmp / "index.h5"
    extract_to_file(model, sorted(str(p) for p in photos.glob("*.jpg")), tmp / "base.h5", root=photos, progress=False,
                    embedder=text_model.image_tower)
    make_index(tmp / "base.h5", index, size=8, use_idf=True)
    return photos, index


@pytest.fixture
def index(tmp_path, built):
    shutil.copy(built[1], tmp_path / "index.h5")
    return tmp_path / "index.h5"


def test_added_photos_are_found_by_image_as_after_a_rebuild_and_by_words(tmp_path, built, index, model, text_model):
    photos = built[0]
    new = [str(photos / "new" / "cat.png"), str(photos / "new" / "coffee.png")]
    with LiveIndex.open(index, model=model, device="cpu", text_model=text_model) as live:
        report = live.add(new)
        assert report.added == ["new/cat.png", "new/coffee.png"] and report.failed == {} and report.text == 2
        again = live.add(new)  # identical files: nothing to do
        assert again.skipped == ["new/cat.png", "new/coffee.png"] and not again.added
        names = live.names()
        assert live.search_text(["a cat"], topk=1)[0].hits[0].name == "new/cat.png"

        # by image: the same ranks and scores as an index rebuilt with the same codebook
        every, ref = tmp_path / "all.h5", tmp_path / "ref.h5"
        extract_to_file(model, [str(photos / n) for n in names], every, root=photos, progress=False)
        make_index(every, ref, codebook=load_codebook(index)[0], use_idf=True)
        with open_features(every) as coll:
            qs = [coll[i] for i in range(len(coll))]
        got = live.search(qs, names, topk=None)
        want = search(*load_index(ref), qs, names, topk=None)
        for g, w in zip(got, want, strict=True):
            assert [h.name for h in g.hits] == [h.name for h in w.hits]
            np.testing.assert_allclose([h.score for h in g.hits], [h.score for h in w.hits], rtol=1e-5)

        # a changed file is extracted again and replaces its entry
        changed = photos / "new" / "changed-cat.png"
        shutil.copy(new[0], changed)
        live.add([changed])
        Image.fromarray(np.asarray(Image.open(changed))[:, ::-1]).save(changed)
        report = live.add([changed])
        assert report.replaced == ["new/changed-cat.png"] and len(live) == 6

    # another reader of the file (`lit search --text`) finds the added photos
    text = read_text(index)
    assert text.names == ["sacre_coeur1.jpg", "sacre_coeur2.jpg", "terrace0.jpg", "new/cat.png", "new/coffee.png",
                          "new/changed-cat.png"]
    assert text.valid.all()
    found, _ = lit.text.search_index_by_text(index, ["a cat", "a cup of coffee"], text_model, topk=1)
    assert found[1]["results"][0]["name"] == "new/coffee.png"
    assert found[0]["results"][0]["name"] in ("new/cat.png", "new/changed-cat.png")


def test_a_model_other_than_the_index_s_is_refused_before_extracting(built, index):
    from lit.models import BackboneConfig, LITConfig, ModelConfig, RuntimeConfig, SuperFeatureModel

    torch.manual_seed(1)
    other = SuperFeatureModel(ModelConfig(backbone=BackboneConfig("resnet18", 3), lit=LITConfig(T=2, N=8, dim=32),
                                          reduction_dim=16, runtime=RuntimeConfig(image_size=96, features_num=20,
                                                                                  scales=(1.0, 0.707, 0.5)))).eval()
    with LiveIndex.open(index, model=other, device="cpu") as live, pytest.raises(FingerprintError):
        live.add([str(built[0] / "new" / "cat.png")])
    assert not [f for f in os.listdir(f"{index}.live") if f.startswith("staging")]


def test_unreadable_files_are_named_and_skipped(built, index, model):
    photos = built[0]
    (photos / "new" / "broken.jpg").write_bytes(b"not an image")
    with LiveIndex.open(index, model=model, device="cpu") as live:
        report = live.add([str(photos / "new" / "broken.jpg"), str(photos / "new" / "coffee.png")])
    assert report.added == ["new/coffee.png"] and list(report.failed) == ["new/broken.jpg"]
    assert "broken.jpg" in report.failed["new/broken.jpg"] and report.status == 3


@pytest.fixture(scope="module")
def scene_features(tmp_path_factory, model):
    """The bundled multi-view scenes (cut down to 160 x 120) extracted once: every photo, the
    first four scenes and the other two, as three feature files of the same descriptors."""
    tmp = tmp_path_factory.mktemp("scenes")
    root = tmp / "photos"
    scenes = sorted(d for d in os.listdir(PHOTOS) if os.path.isdir(os.path.join(PHOTOS, d)))
    for scene in scenes:
        (root / scene).mkdir(parents=True)
        for f in sorted(os.listdir(os.path.join(PHOTOS, scene))):
            Image.open(os.path.join(PHOTOS, scene, f)).convert("RGB").resize((160, 120)).save(root / scene / f)
    extract_to_file(model, sorted(str(p) for p in root.glob("*/*")), tmp / "all.h5", root=root, progress=False)
    with open_features(tmp / "all.h5") as coll:
        for part, keep in (("base", scenes[:4]), ("added", scenes[4:])):
            with FeatureStore(tmp / f"{part}.h5", "a", descriptor_dim=coll.descriptor_dim, fingerprint=coll.fingerprint,
                              root=coll.root, settings=coll.settings) as store:
                for i, name in enumerate(coll.names):
                    if name.split("/")[0] in keep:
                        store.append(name, coll[i])
    return tmp


@pytest.mark.parametrize("binary", [True, False])
def test_scenes_added_to_an_index_of_other_scenes_rank_and_score_as_a_rebuild(tmp_path, scene_features, binary):
    """An index of four of the bundled scenes (codebook learned on them), the other two
    added: every photo as a query ranks and scores as against an index of all twelve built
    at once with the same codebook, from the same descriptors, within 1e-5."""
    index = tmp_path / "index.h5"
    make_index(scene_features / "base.h5", index, size=64, binary=binary, use_idf=True)
    with LiveIndex.open(index, device="cpu") as live:
        live.add_features(scene_features / "added.h5")
        names = live.names()
    make_index(scene_features / "all.h5", tmp_path / "ref.h5", codebook=load_codebook(index)[0], binary=binary,
               use_idf=True)
    with open_features(scene_features / "all.h5") as coll:
        assert list(coll.names) == names  # the same order: ids agree
        qs = [coll[i] for i in range(len(coll))]
    got = search(*load_index(index), qs, names, topk=None)  # the file with its journal, as `lit search` reads it
    want = search(*load_index(tmp_path / "ref.h5"), qs, names, topk=None)
    for g, w in zip(got, want, strict=True):
        assert [h.name for h in g.hits] == [h.name for h in w.hits]
        np.testing.assert_allclose([h.score for h in g.hits], [h.score for h in w.hits], rtol=1e-5)
