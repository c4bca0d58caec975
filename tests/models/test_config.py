"""Model configuration (lit.models.config): the match rule travels in it."""

import json

import pytest

from lit.matching import FIRE_THRESHOLD
from lit.models import MatchConfig, ModelConfig


def test_default_match_rule_is_fires_cosine_threshold():
    assert ModelConfig().match == MatchConfig() == MatchConfig(threshold=0.9, margin=None, background_size=0)
    assert FIRE_THRESHOLD == 0.9


def test_config_round_trips_through_json_with_its_rule(tiny_cfg):
    from dataclasses import replace

    cfg = replace(tiny_cfg, match=MatchConfig(threshold=None, margin=0.1, background_size=12))
    back = ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg and back.match.background_size == 12


def test_config_without_match_gets_fires_rule(tiny_cfg):
    d = tiny_cfg.to_dict()
    del d["match"]
    assert ModelConfig.from_dict(d).match == MatchConfig()


@pytest.mark.parametrize("kwargs, message", [
    ({"threshold": 1.5}, "at most 1"),
    ({"threshold": float("nan")}, "finite"),
    ({"threshold": "0.9"}, "finite number"),
    ({"margin": 0.1}, "needs a background bank"),
    ({"margin": None, "background_size": 4}, "a bank needs a margin"),
    ({"margin": 3.0, "background_size": 4}, "-2..2"),
    ({"margin": 0.1, "background_size": -1}, ">= 0"),
])
def test_bad_match_config_is_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MatchConfig(**kwargs)


def test_unknown_match_key_is_refused(tiny_cfg):
    d = tiny_cfg.to_dict()
    d["match"]["ratio"] = 0.8
    with pytest.raises(ValueError, match="unknown keys in match config"):
        ModelConfig.from_dict(d)
