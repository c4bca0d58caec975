"""plot_attention: each map over its own peak by default (as the command line), and portrait
photos do not give a towering figure."""

import torch

from lit.types import SuperFeatures
from lit.viz import plot_attention


def _sf(h, w, n=16):
    att = torch.zeros(n, h, w)
    att[:, 0, 0] = torch.linspace(1.0, 0.01, n)  # maps that peak in one cell, some very weakly
    return SuperFeatures(torch.randn(n, 8), torch.linspace(2, 1, n), att)


def test_default_normalises_each_map_by_its_own_peak():
    fig = plot_attention(torch.rand(3, 64, 48), _sf(4, 3))
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert any("peak" in t for t in titles), titles  # "each": the peak is written in every panel title


def test_portrait_photo_panels_stay_about_two_inches_high():
    w, h = plot_attention(torch.rand(3, 200, 100), _sf(8, 4)).get_size_inches()
    assert h <= 4 * 2.5 + 0.5 and w <= 8.8
