"""lit.pipeline.match: the match rule of a registered model and of model.match is the model's own."""

import os
import shutil

import numpy as np
import pytest
import torch

from lit import pipeline
from lit.matching import MatchRule


def test_registry_rule_is_the_models(tiny_model, tmp_path):
    import lit
    from lit._resources import weights_file

    rule = tiny_model.match_rule()  # a model without a rule of its own: FIRe's 0.9, no background
    assert rule.threshold == 0.9 and rule.margin is None and rule.background is None
    # lit-effl0's background test travels in its weights file (provenance of the bank:
    # tests/models/test_checkpoint.py::test_shipped_lit_effl0_carries_its_calibrated_rule)
    shipped = weights_file("lit-effl0.safetensors")
    bank = lit.load_model("lit-effl0").match_background
    for model in (lit.load_model("lit-effl0"), lit.load_model(shipped)):  # by name, by path
        rule = model.match_rule()
        assert rule.threshold is None and 0 < rule.margin < 0.3
        assert torch.equal(rule.background, bank)
        assert "background" in rule.describe() and f"+ {rule.margin:g}" in rule.describe()
        plain = model.match_rule(threshold=0.9, margin=None)
        assert plain.background is None and plain.threshold == 0.9
    shutil.copy(shipped, tmp_path / "renamed.safetensors")  # a copy (or a fine-tuned file) keeps the rule
    assert torch.equal(lit.load_model(tmp_path / "renamed.safetensors").match_rule().background, bank)
    with pytest.raises(ValueError, match="no match background"):
        tiny_model.match_rule(margin=0.1)


def test_model_match_uses_its_rule(tiny_model, monkeypatch):
    import lit
    from lit.matching import MatchRule

    img_a, img_b = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(0)), torch.rand(3, 64, 64)
    tiny_model.set_match_rule(MatchRule(threshold=0.3))
    fa, fb, m = tiny_model.match(img_a, img_b)
    expected = lit.match(fa, fb, threshold=0.3)
    assert torch.equal(m.indices_a, expected.indices_a) and len(m) == len(expected)
    assert bool((m.similarity >= 0.3).all())
    with pytest.raises(ValueError):
        tiny_model.match(img_a, img_b, threshold="fire")
    # a background rule: the features of a third image are the background
    bg = tiny_model.extract(torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(5))).descriptors
    tiny_model.set_match_rule(MatchRule(threshold=None, margin=-0.05, background=bg))
    fa, fb, m = tiny_model.match(img_a, img_b)
    expected = lit.match(fa, fb, threshold=None, background=bg, margin=-0.05)
    assert torch.equal(m.indices_a, expected.indices_a) and torch.equal(m.indices_b, expected.indices_b)
    # image a as its own background: each of its super-features has cosine 1 to it, so no
    # pair beats the background by a margin of 0.001
    tiny_model.set_match_rule(MatchRule(threshold=None, margin=0.001, background=fa.descriptors))
    assert len(lit.match(fa, fb, threshold=None)) > 0 and len(tiny_model.match(img_a, img_b)[2]) == 0


def test_matches_json_is_valid_utf_8_and_keeps_the_bytes_of_odd_names(tmp_path):
    import json

    from lit.types import Matches

    latin1 = os.fsdecode(b"s/caf\xe9.jpg")
    m = Matches(torch.tensor([0]), torch.tensor([1]), torch.tensor([0.95]), torch.ones(1), torch.ones(1))
    pair = pipeline.PairMatches(latin1, "s/b.jpg", m, 5, 5, np.zeros((1, 2), np.float32), np.ones((1, 2), np.float32))
    pipeline.write_matches_json([pair], tmp_path / "m.json", MatchRule(threshold=0.9))
    doc = json.loads((tmp_path / "m.json").read_text(encoding="utf-8"))["pairs"][0]
    assert doc["a"] == "s/caf\\xe9.jpg" and pipeline.json_name(doc, "a") == latin1
    assert doc["b"] == "s/b.jpg" and "b_bytes" not in doc
