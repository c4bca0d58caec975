"""plot_matches draws the matches it is given, from raw positions or from Matches and LocalFeatures."""

import pytest
import torch
from matplotlib.collections import LineCollection

from lit.errors import UsageError
from lit.types import LocalFeatures, Matches
from lit.viz import plot_matches


def _feats(k):
    return LocalFeatures(torch.randn(k, 8), torch.ones(k), torch.ones(k), torch.arange(k),
                         torch.arange(2 * k, dtype=torch.float32).view(k, 2))


def _lines(fig):
    (lines,) = [c for c in fig.axes[0].collections if isinstance(c, LineCollection)]
    return lines


def test_matches_under_a_model_rule_below_0_9_are_all_drawn():
    fa, fb = _feats(5), _feats(6)
    sim = torch.tensor([0.781, 0.76, 0.747])
    m = Matches(torch.tensor([0, 2, 4]), torch.tensor([1, 3, 5]), sim, torch.ones(3), torch.ones(3))
    fig = plot_matches(torch.rand(3, 20, 20), torch.rand(3, 20, 20), fa, fb, m)
    assert fig.axes[0].get_title().startswith("3 matches")
    segments = _lines(fig).get_segments()
    assert len(segments) == 3
    # the least similar is drawn first: match (4, 5), from fa.positions[4] to fb.positions[5]
    assert segments[0][0].tolist() == fa.positions[4].tolist()
    raw = plot_matches(torch.rand(3, 20, 20), torch.rand(3, 20, 20), fa.positions[:3], fb.positions[:3], sim)
    assert raw.axes[0].get_title().startswith("3 matches")


def test_an_explicit_threshold_still_filters():
    sim = torch.tensor([0.95, 0.8])
    fig = plot_matches(torch.rand(3, 20, 20), torch.rand(3, 20, 20), torch.zeros(2, 2), torch.ones(2, 2), sim,
                       threshold=0.9)
    assert fig.axes[0].get_title().startswith("1 match")


def test_features_without_their_matches_are_refused():
    fa = _feats(3)
    with pytest.raises(UsageError, match="give the Matches"):
        plot_matches(torch.rand(3, 20, 20), torch.rand(3, 20, 20), fa, fa, torch.ones(3))
