"""Retrieval figures keep the scene and the file of each name, and show a text query's words."""

import torch

from lit.viz import _short, plot_retrieval


def test_a_long_name_keeps_its_scene_and_file():
    assert _short("#1 photos/wxbs-wlabs-dh/01.jpg", 22) == "#1 photos/\nwxbs-wlabs-dh/01.jpg"
    short = _short("#2 a/b/c/d/e/f/g/h/i/j/k/l/m/scene/01.jpg", 14)
    assert short.startswith("#2 …/") and short.endswith("scene/01.jpg") and short.count("\n") <= 2
    assert _short("a church at night in the city of prague with snow", 22) == "a church at night in\nthe city of prague …"


def test_text_query_panel_shows_the_words():
    fig = plot_retrieval(None, [torch.rand(3, 20, 30)], scores=[0.5], query_title="text query",
                         query_text="a church at night")
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert any("a church at night" in t.replace("\n", " ") for t in texts)
