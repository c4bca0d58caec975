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


@pytest.fixture(scope="module")
def tokens(world):
    """Super-features and tokens of the photos, by one ``lit extract --tokens``."""
    photos = world["tmp"] / "photos"
    feats = world["tmp"] / "with_tokens.h5"
    assert main(["extract", str(photos), "--tokens", "--out", str(feats), "--model", str(world["ckpt"]), "--device",
                 "cpu", "--quiet"]) == 0
    return world["tmp"] / "with_tokens.tokens.h5"


def test_rerank_by_tokens_verifies_each_query_against_its_own_image_first(world, tokens):
    from lit.features import open_features

    with open_features(tokens) as t, open_features(world["feats"]) as f, \
            open_features(world["tmp"] / "with_tokens.h5") as beside:
        assert beside[0].descriptors.equal(f[0].descriptors)  # the super-features, as without --tokens
        assert t.names == f.names and t.descriptor_dim == 64  # the tiny backbone's 256 channels, projected to 64
        assert t.settings["scales"] == [1.414, 1.0, 0.707] and len(t[0]) > 8
    plain = _search(world, "tok_plain", "--keep-unscored")  # a verified image of ASMK score 0 is listed
    res = _search(world, "tok", "--rerank", "4", "--db-tokens", str(tokens), "--query-tokens", str(tokens))
    for p, r in zip(plain, res, strict=True):
        assert sorted(h["name"] for h in p["results"]) == sorted(h["name"] for h in r["results"])
        first = r["results"][0]
        assert first["name"] == r["query"] and first["support"] >= 8  # every token matches itself
    # query images: their tokens are extracted; the same supports as the token file's
    photo = world["tmp"] / "photos" / res[0]["query"]
    out = world["tmp"] / "tok_images.json"
    assert main(["search", str(world["index"]), str(photo), "--model", str(world["ckpt"]), "--device", "cpu",
                 "--topk", "4", "--json", str(out), "--rerank", "4", "--db-tokens", str(tokens)]) == 0
    hits = json.loads(out.read_text())["queries"][0]["results"]
    assert [(h["name"], h["support"]) for h in hits] == [(h["name"], h["support"]) for h in res[0]["results"]]


def test_rerank_by_tokens_refuses_what_it_cannot_verify(world, tokens, capsys):
    base = ["search", str(world["index"]), "--query-features", str(world["feats"]), "--device", "cpu"]
    assert main([*base, "--model", str(world["ckpt"]), "--db-tokens", str(tokens)]) == 2
    assert "give --rerank N too" in capsys.readouterr().err
    assert main([*base, "--model", str(world["ckpt"]), "--rerank", "3", "--db-tokens", str(tokens)]) == 2
    assert "--query-tokens" in capsys.readouterr().err
    assert main([*base, "--model", str(world["other"]), "--force", "--rerank", "3", "--db-tokens", str(tokens),
                 "--query-tokens", str(tokens)]) == 2
    assert "another model" in capsys.readouterr().err
    assert main([*base, "--model", str(world["ckpt"]), "--rerank", "3", "--expand", "1", "--db-tokens", str(tokens),
                 "--query-tokens", str(tokens)]) == 2
    assert "expansion" in capsys.readouterr().err


def test_rerank_verifies_the_tokens_beside_the_index_s_feature_file_by_default(world, tokens, capsys):
    photos, feats, index = world["tmp"] / "photos", world["tmp"] / "with_tokens.h5", world["tmp"] / "with_tokens_index.h5"
    assert main(["index", str(feats), "--out", str(index), "--device", "cpu", "--image-root", str(photos)]) == 0

    def run(name, *extra, rerank=("--rerank", "4")):
        out = world["tmp"] / f"{name}.json"
        assert main(["search", str(index), "--query-features", str(feats), "--model", str(world["ckpt"]), "--device",
                     "cpu", "--topk", "4", "--json", str(out), *rerank, *extra]) == 0
        return [[(h["name"], h.get("support")) for h in q["results"]] for q in json.loads(out.read_text())["queries"]]

    found = run("beside")  # db tokens beside the index's feature file, query tokens beside --query-features
    assert found == run("default", rerank=())  # re-ranked by default (100 >= the 4 images) where tokens are
    assert all(k is None for q in run("off", rerank=("--rerank", "0")) for _, k in q)
    assert found == run("explicit", "--db-tokens", str(tokens), "--query-tokens", str(tokens))
    assert found != run("superfeatures", "--db-tokens", "none")  # supports of super-features: few (8 per image)
    capsys.readouterr()
    assert main(["search", str(index), "--query-features", str(world["feats"]), "--model", str(world["ckpt"]),
                 "--device", "cpu", "--rerank", "4"]) == 2  # queries without a token file beside them
    assert "feats.tokens.h5" in capsys.readouterr().err
