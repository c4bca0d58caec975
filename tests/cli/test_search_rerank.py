"""``lit search --rerank/--expand`` in this process, on a tiny model's index of crops of two
bundled photos."""

import json
import os

import pytest
import torch
from photo_folders import two_scene_photos

from lit.cli import main
from lit.models import (
    BackboneConfig,
    LITConfig,
    ModelConfig,
    RuntimeConfig,
    SuperFeatureModel,
    save_checkpoint,
)

PHOTOS = os.path.join(os.path.dirname(__file__), "..", "..", "lit", "assets", "photos")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rerank_cli")
    cfg = ModelConfig(backbone=BackboneConfig("resnet18", 3), lit=LITConfig(T=2, N=8, dim=32), reduction_dim=16,
                      runtime=RuntimeConfig(image_size=96, features_num=20, scales=(1.0, 0.707, 0.5)))
    torch.manual_seed(0)
    ckpt = tmp / "model.pt"
    save_checkpoint(SuperFeatureModel(cfg).eval(), ckpt)
    photos = two_scene_photos(tmp / "photos")
    feats, index = tmp / "feats.h5", tmp / "index.h5"
    assert main(["extract", str(photos), "--out", str(feats), "--model", str(ckpt), "--device", "cpu", "--quiet"]) == 0
    assert main(["index", str(feats), "--out", str(index), "--device", "cpu", "--image-root", str(photos)]) == 0
    torch.manual_seed(1)
    other = tmp / "other.pt"  # the same architecture, other weights
    save_checkpoint(SuperFeatureModel(cfg).eval(), other)
    return {"tmp": tmp, "ckpt": ckpt, "other": other, "feats": feats, "index": index}


def _search(world, name, *extra):
    out = world["tmp"] / f"{name}.json"
    assert main(["search", str(world["index"]), "--query-features", str(world["feats"]), "--model", str(world["ckpt"]),
                 "--device", "cpu", "--topk", "4", "--json", str(out), *extra]) == 0
    return json.loads(out.read_text())["queries"]


def test_rerank_zero_is_plain_search_and_rerank_keeps_ranks_below_n(world):
    plain = _search(world, "plain")
    assert _search(world, "zero", "--rerank", "0") == plain
    assert all("support" not in h for q in plain for h in q["results"])
    two = _search(world, "two", "--rerank", "2")
    for p, r in zip(plain, two, strict=True):
        assert [h["name"] for h in p["results"]][2:] == [h["name"] for h in r["results"]][2:]
        assert sorted(h["name"] for h in p["results"][:2]) == sorted(h["name"] for h in r["results"][:2])
        assert all(isinstance(h["support"], int) for h in r["results"][:2])
    expanded = _search(world, "expanded", "--rerank", "4", "--expand", "1")
    assert [q["query"] for q in expanded] == [q["query"] for q in plain]


def test_rerank_refuses_features_of_another_model_and_a_missing_feature_file(world, capsys):
    code = main(["search", str(world["index"]), "--query-features", str(world["feats"]), "--model", str(world["other"]),
                 "--device", "cpu", "--rerank", "3", "--force"])
    assert code == 2 and "another model" in capsys.readouterr().err
    code = main(["search", str(world["index"]), "--query-features", str(world["feats"]), "--model", str(world["ckpt"]),
                 "--device", "cpu", "--rerank", "3", "--db-features", str(world["tmp"] / "gone.h5")])
    assert code == 2 and "gone.h5" in capsys.readouterr().err
    code = main(["search", str(world["index"]), "--query-features", str(world["feats"]), "--model", str(world["ckpt"]),
                 "--device", "cpu", "--expand", "2", "--rerank", "0"])
    assert code == 2 and "needs re-ranking" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["query.jpg", "-1"])
def test_rerank_refuses_a_value_that_is_not_a_count(world, capsys, value):
    with pytest.raises(SystemExit) as exit_:
        main(["search", str(world["index"]), "--rerank", value, "query.jpg", "--device", "cpu"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "--rerank" in err and "number of images" in err and "Traceback" not in err
