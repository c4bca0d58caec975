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
from lit.features import open_features
from lit.index_file import load_index, read_text
from lit.pipeline import extract_to_file, load_codebook, make_index
from lit.pipeline.live import LiveIndex
from lit.pipeline.search import search

PHOTOS = os.path.join(os.path.dirname(lit.__file__), "assets", "photos")


@pytest.fixture(scope="module")
def text_model():
    import lit.text

    return lit.text.load_text_model()


@pytest.fixture
def photos(tmp_path):
    from skimage import data

    d = tmp_path / "photos"
    (d / "new").mkdir(parents=True)
    for src in ("sacre_coeur/sacre_coeur1.jpg", "sacre_coeur/sacre_coeur2.jpg", "terrace/terrace0.jpg"):
        Image.open(os.path.join(PHOTOS, src)).convert("RGB").resize((200, 150)).save(d / os.path.basename(src))
    Image.fromarray(data.chelsea()).resize((200, 150)).save(d / "new" / "cat.png")
    Image.fromarray(data.coffee()).resize((200, 150)).save(d / "new" / "coffee.png")
    return d


def test_added_photos_are_found_by_image_as_after_a_rebuild_and_by_words(tmp_path, photos, tiny_model, text_model):
    base = sorted(str(p) for p in photos.glob("*.jpg"))
    new = [str(photos / "new" / "cat.png"), str(photos / "new" / "coffee.png")]
    feats, index = tmp_path / "base.h5", tmp_path / "index.h5"
    extract_to_file(tiny_model, base, feats, root=photos, progress=False, embedder=text_model.image_tower)
    make_index(feats, index, size=8, use_idf=True)

    with LiveIndex.open(index, model=tiny_model, device="cpu", text_model=text_model) as live:
        report = live.add(new)
        assert report.added == ["new/cat.png", "new/coffee.png"] and report.failed == {} and report.text == 2
        again = live.add(new)  # identical files: nothing to do
        assert again.skipped == ["new/cat.png", "new/coffee.png"] and not again.added
        names = live.names()
        hits = live.search_text(["a cat"], topk=1)[0].hits
        assert hits[0].name == "new/cat.png"

        # by image: the same ranks and scores as an index rebuilt with the same codebook
        every, ref = tmp_path / "all.h5", tmp_path / "ref.h5"
        extract_to_file(tiny_model, [str(photos / n) for n in names], every, root=photos, progress=False)
        make_index(every, ref, codebook=load_codebook(index)[0], use_idf=True)
        with open_features(every) as coll:
            qs = [coll[i] for i in range(len(coll))]
        got = live.search(qs, names, topk=None)
        want = search(*load_index(ref), qs, names, topk=None)
        for g, w in zip(got, want, strict=True):
            assert [h.name for h in g.hits] == [h.name for h in w.hits]
            np.testing.assert_allclose([h.score for h in g.hits], [h.score for h in w.hits], rtol=1e-5)

        # a changed file is extracted again and replaces its entry
        Image.fromarray(np.asarray(Image.open(new[0]))[:, ::-1]).save(new[0])
        changed = live.add([new[0]])
        assert changed.replaced == ["new/cat.png"] and len(live) == 5

    # another reader of the file (`lit search --text`) finds the added photos
    text = read_text(index)
    assert text.names == ["sacre_coeur1.jpg", "sacre_coeur2.jpg", "terrace0.jpg", "new/coffee.png", "new/cat.png"]
    assert text.valid.all()
    found, _ = lit.text.search_index_by_text(index, ["a cat", "a cup of coffee"], text_model, topk=1)
    assert [r["results"][0]["name"] for r in found] == ["new/cat.png", "new/coffee.png"]


def test_a_model_other_than_the_index_s_is_refused_before_extracting(tmp_path, photos, tiny_model, tiny_cfg):
    from lit.models import SuperFeatureModel

    feats, index = tmp_path / "base.h5", tmp_path / "index.h5"
    extract_to_file(tiny_model, sorted(str(p) for p in photos.glob("*.jpg")), feats, root=photos, progress=False)
    make_index(feats, index, size=8)
    torch.manual_seed(1)
    other = SuperFeatureModel(tiny_cfg).eval()
    with LiveIndex.open(index, model=other, device="cpu") as live, pytest.raises(FingerprintError):
        live.add([str(photos / "new" / "cat.png")])
    assert not [f for f in os.listdir(str(index) + ".live") if f.startswith("staging")]


def test_unreadable_files_are_named_and_skipped(tmp_path, photos, tiny_model):
    feats, index = tmp_path / "base.h5", tmp_path / "index.h5"
    extract_to_file(tiny_model, sorted(str(p) for p in photos.glob("*.jpg")), feats, root=photos, progress=False)
    make_index(feats, index, size=8)
    (photos / "new" / "broken.jpg").write_bytes(b"not an image")
    shutil.copy(photos / "new" / "cat.png", photos / "new" / "cat2.png")
    with LiveIndex.open(index, model=tiny_model, device="cpu") as live:
        report = live.add([str(photos / "new" / "broken.jpg"), str(photos / "new" / "cat2.png")])
    assert report.added == ["new/cat2.png"] and list(report.failed) == ["new/broken.jpg"]
    assert "broken.jpg" in report.failed["new/broken.jpg"] and report.status == 3
