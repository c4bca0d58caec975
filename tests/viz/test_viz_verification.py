import matplotlib
import numpy as np
import pytest
import torch

from lit import viz

matplotlib.use("Agg")


def _line_colours(fig):
    from matplotlib.collections import LineCollection

    cols = [c for c in fig.axes[0].collections if isinstance(c, LineCollection)]
    return np.concatenate([c.get_colors() for c in cols])


def test_plot_matches_draws_inliers_and_outliers_in_two_colours():
    img = torch.rand(3, 40, 60)
    pa = torch.tensor([[5.0, 5.0], [20.0, 10.0], [30.0, 30.0], [50.0, 20.0]])
    sim = torch.tensor([0.9, 0.8, 0.7, 0.6])
    inliers = torch.tensor([True, False, True, False])
    fig = viz.plot_matches(img, img, pa, pa + 1, sim, threshold=None, inliers=inliers)
    colours = {tuple(np.round(c, 3)) for c in _line_colours(fig)}
    assert len(colours) == 2
    assert "2 verified" in fig.axes[0].get_title() and "2 not" in fig.axes[0].get_title()
    assert len(fig.axes) == 1  # no similarity colour bar
    plain = viz.plot_matches(img, img, pa, pa + 1, sim, threshold=None)
    assert len(plain.axes) == 2  # coloured by similarity, with its colour bar
    with pytest.raises(ValueError, match="inlier"):
        viz.plot_matches(img, img, pa, pa + 1, sim, threshold=None, inliers=inliers[:3])
