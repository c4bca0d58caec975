"""lit.pipeline.search: fingerprint checks, search results equal to the index, excluding the query itself."""

import numpy as np
import pytest
import torch
from feature_files import write_feature_file

from lit import pipeline


def test_fingerprint_check_refuses_or_warns(caplog):
    pipeline.check_fingerprint("abc", "abc", "queries", "index.h5")
    pipeline.check_fingerprint("abc", None, "queries", "index.h5")  # unknown: not checked
    with pytest.raises(pipeline.FingerprintError, match="another model.*force=True") as err:
        pipeline.check_fingerprint("abc", "xyz", "queries", "index.h5")
    assert "--force" in err.value.cli and "--model" in err.value.cli  # the command line's wording
    with caplog.at_level("WARNING", logger="lit"):
        pipeline.check_fingerprint("abc", "xyz", "queries", "index.h5", force=True)
    assert [r.levelname for r in caplog.records] == ["WARNING"] and "going on (--force)" in caplog.text


def test_search_matches_the_index_and_excludes_self(tmp_path):
    feats = write_feature_file(tmp_path / "f.h5")
    index, info = pipeline.build_index(tmp_path / "f.h5", size=8)
    res = pipeline.search(index, info, feats, list(info.names), topk=None, keep_unscored=True)
    ranks, scores = index.search(torch.cat([f.descriptors for f in feats]),
                                 np.repeat(np.arange(4), 40), topk=None)
    for q, r in enumerate(res):
        assert [h.name for h in r.hits] == [info.names[i] for i in ranks[q].tolist()]
        np.testing.assert_allclose([h.score for h in r.hits], scores[q].numpy(), rtol=1e-6)
    ex = pipeline.search(index, info, feats, list(info.names), topk=2, exclude_self=True, keep_unscored=True)
    for q, r in enumerate(ex):
        assert len(r.hits) == 2 and info.names[q] not in [h.name for h in r.hits]
        assert [h.rank for h in r.hits] == [1, 2]
    # scene_a/1.jpg: the other scene_a photo is the best result once itself is left out
    assert ex[0].hits[0].name == "scene_a/2.jpg"


def test_exclude_self_by_real_path_when_roots_are_known(tmp_path):
    feats = write_feature_file(tmp_path / "f.h5")
    index, info = pipeline.build_index(tmp_path / "f.h5", size=8, image_root=tmp_path / "db")
    # the same image named from another root: db/scene_a/1.jpg == ./db/scene_a/1.jpg
    res = pipeline.search(index, info, feats[:1], ["db/scene_a/1.jpg"], topk=None, exclude_self=True,
                          query_root=str(tmp_path), keep_unscored=True)
    assert "scene_a/1.jpg" not in [h.name for h in res[0].hits] and len(res[0].hits) == 3


def test_a_query_too_small_for_the_model_is_named_with_its_own_size(tmp_path, tiny_model):
    from PIL import Image

    from lit.errors import ImageTooSmallError
    from lit.index_file import IndexInfo

    Image.new("RGB", (5000, 5), (120, 30, 200)).save(tmp_path / "thin.png")
    info = IndexInfo(names=["a.jpg"], image_root=None, fingerprint=None)
    with pytest.raises(ImageTooSmallError) as err:
        pipeline.queries_from_images(tiny_model, [str(tmp_path / "thin.png")], info)
    assert str(err.value).startswith(f"{tmp_path / 'thin.png'}: too small (5000x5 pixels, 96x1 after the resize")
