"""Tests of lit.viz: figures are produced, saved, and readable; centroids are exact."""

import os
import subprocess
import sys

import matplotlib
import numpy as np
import pytest
import torch
from matplotlib.collections import LineCollection
from matplotlib.colors import to_hex
from matplotlib.figure import Figure
from PIL import Image

import lit
from lit import viz
from lit.errors import UsageError
from lit.types import LocalFeatures, Matches, SuperFeatures
from lit.viz import (
    _short,
    attention_centroids,
    plot_attention,
    plot_matches,
    plot_retrieval,
    save_figure,
)

PHOTOS = os.path.join(os.path.dirname(lit.__file__), "assets", "photos")  # bundled, with attribution
SACRE_1 = os.path.join(PHOTOS, "sacre_coeur", "sacre_coeur1.jpg")  # 1024 x 731, landscape
SACRE_2 = os.path.join(PHOTOS, "sacre_coeur", "sacre_coeur2.jpg")  # 768 x 1024, portrait
STREET_1 = os.path.join(PHOTOS, "street", "DSC_0410.JPG")
STREET_2 = os.path.join(PHOTOS, "street", "DSC_0411.JPG")


def check_png(fig, path, dpi=60):
    """Save, re-open with PIL, and check size and content; returns the RGB array."""
    assert isinstance(fig, Figure)
    out = save_figure(fig, path, dpi=dpi)
    assert out == os.fspath(path) and os.path.getsize(path) > 0
    with Image.open(path) as im:
        assert im.format == "PNG"
        w, h = im.size
        arr = np.asarray(im.convert("RGB"))
    assert abs(w - fig.get_figwidth() * dpi) <= 1 and abs(h - fig.get_figheight() * dpi) <= 1
    assert arr.reshape(-1, 3).std(axis=0).max() > 5  # not a single colour
    return arr


def gaussian_attention(n, h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    cy, cx = torch.rand(n, generator=g) * h, torch.rand(n, generator=g) * w
    sig = 1.0 + torch.rand(n, generator=g) * max(h, w) / 4
    yy, xx = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    a = torch.exp(
        -((yy - cy[:, None, None]) ** 2 + (xx - cx[:, None, None]) ** 2)
        / (2 * sig[:, None, None] ** 2)
    )
    return a / a.sum(dim=(1, 2), keepdim=True)


@pytest.fixture
def small_image():
    g = torch.Generator().manual_seed(1)
    return torch.rand(3, 48, 64, generator=g)


@pytest.fixture
def small_superfeatures():
    g = torch.Generator().manual_seed(2)
    n = 10
    return SuperFeatures(
        descriptors=torch.randn(n, 16, generator=g),
        strengths=torch.rand(n, generator=g) * 5,
        attention=gaussian_attention(n, 3, 4),
        scale=1.0,
    )


# ---------------------------------------------------------------------------------------
# attention_centroids
# ---------------------------------------------------------------------------------------


def test_one_hot_map_gives_cell_centre():
    a = torch.zeros(1, 3, 4)
    a[0, 1, 2] = 1.0
    # cell (i=1, j=2) of a 3x4 map over a 30x40 image: ((2 + 0.5) * 10, (1 + 0.5) * 10)
    assert attention_centroids(a, (30, 40)).tolist() == [[25.0, 15.0]]
    # non-square cells: H=60, W=20 -> x = 2.5 * 5, y = 1.5 * 20
    assert attention_centroids(a, (60, 20)).tolist() == [[12.5, 30.0]]


def test_centroid_is_weighted_mean_of_cell_centres():
    a = torch.zeros(2, 2, 2)
    a[0, 0, 0], a[0, 1, 1] = 3.0, 1.0  # centres (5, 5) and (15, 15) on a 20x20 image
    a[1] = 1.0  # uniform: image centre
    xy = attention_centroids(a, (20, 20))
    torch.testing.assert_close(xy, torch.tensor([[7.5, 7.5], [10.0, 10.0]]))


def test_centroid_accepts_numpy_and_batches():
    a = np.random.default_rng(0).random((2, 5, 3, 4))
    xy = attention_centroids(a, (30, 40))
    assert xy.shape == (2, 5, 2) and xy.dtype == torch.float32
    torch.testing.assert_close(
        xy[1, 2], attention_centroids(torch.from_numpy(a[1, 2:3]), (30, 40))[0]
    )


def test_zero_map_gives_image_centre():
    assert attention_centroids(torch.zeros(1, 3, 3), (10, 30)).tolist() == [[15.0, 5.0]]


def test_centroid_rejects_bad_input():
    with pytest.raises(ValueError):
        attention_centroids(-torch.ones(1, 2, 2), (4, 4))
    with pytest.raises(ValueError):
        attention_centroids(torch.ones(4), (4, 4))
    with pytest.raises(ValueError):
        attention_centroids(torch.ones(1, 2, 2), (0, 4))


def test_centroids_agree_with_model_convention():
    from lit.models import attention_centroids as model_centroids  # core package: never skipped
    a = torch.rand(6, 5, 7)
    torch.testing.assert_close(attention_centroids(a, (80, 112)), model_centroids(a, (80, 112)))


# ---------------------------------------------------------------------------------------
# plot_attention
# ---------------------------------------------------------------------------------------


def test_plot_attention_shows_strongest_first(small_image, small_superfeatures, tmp_path):
    fig = plot_attention(small_image, small_superfeatures, top=6, ncols=3, normalize="shared")
    check_png(fig, tmp_path / "att.png")
    order = torch.argsort(small_superfeatures.strengths, descending=True)[:6].tolist()
    panels = [ax for ax in fig.axes if ax.images]
    assert len(panels) == 6
    assert [ax.get_title().split(",")[0] for ax in panels] == [f"n = {n}" for n in order]
    s0 = float(small_superfeatures.strengths[order[0]])
    assert f"strength {s0:.3g}" in panels[0].get_title()
    assert any(ax.get_ylabel() == "attention weight" for ax in fig.axes)  # the colour bar


def test_plot_attention_uses_one_colour_scale(small_image, small_superfeatures):
    idx = [7, 0, 3]
    fig = plot_attention(small_image, small_superfeatures, indices=idx, normalize="shared")
    overlays = [ax.images[1] for ax in fig.axes if ax.images]
    assert len(overlays) == 3
    vmax = float(small_superfeatures.attention[idx].max())
    for im in overlays:
        assert im.norm.vmin == 0.0 and im.norm.vmax == pytest.approx(vmax)
        assert im.get_array().shape == (48, 64)  # upsampled to the image size
    assert [ax.get_title().split(",")[0] for ax in fig.axes if ax.images] == [
        "n = 7",
        "n = 0",
        "n = 3",
    ]


def test_plot_attention_accepts_all_image_forms(small_superfeatures, tmp_path):
    arr = (np.random.default_rng(0).random((30, 40, 3)) * 255).astype(np.uint8)
    path = tmp_path / "img.png"
    Image.fromarray(arr).save(path)
    for image in (
        arr,
        Image.fromarray(arr),
        str(path),
        path,
        torch.from_numpy(arr).permute(2, 0, 1) / 255.0,
        arr[:, :, 0],
    ):
        fig = plot_attention(image, small_superfeatures, top=2)
        assert fig.axes[0].images[0].get_array().shape == (30, 40)


def test_plot_attention_errors(small_image, small_superfeatures):
    feats = LocalFeatures(torch.ones(2, 4), torch.ones(2), torch.ones(2), torch.arange(2))
    with pytest.raises(TypeError):
        plot_attention(small_image, feats)
    with pytest.raises(ValueError):
        plot_attention(small_image, small_superfeatures, indices=[10])
    with pytest.raises(ValueError):
        plot_attention(small_image, small_superfeatures, indices=[])
    with pytest.raises(ValueError):
        plot_attention(small_image, small_superfeatures, top=0)
    with pytest.raises(ValueError):
        plot_attention(small_image, small_superfeatures, ncols=0)
    with pytest.raises(ValueError):
        sf = small_superfeatures
        plot_attention(small_image, SuperFeatures(sf.descriptors, sf.strengths, torch.ones(10, 12)))
    with pytest.raises(TypeError):
        plot_attention(42, small_superfeatures)
    with pytest.raises(ValueError):
        plot_attention(torch.ones(5, 8, 8), small_superfeatures)


# ---------------------------------------------------------------------------------------
# plot_matches
# ---------------------------------------------------------------------------------------


def test_plot_matches_counts_and_draws(tmp_path):
    img_a = torch.rand(3, 40, 60)
    img_b = (np.random.default_rng(0).random((80, 50, 3)) * 255).astype(np.uint8)  # twice as tall
    pa = torch.tensor([[10.0, 10.0], [20.0, 30.0], [50.0, 5.0], [1.0, 1.0], [30.0, 20.0]])
    pb = torch.tensor([[40.0, 60.0], [10.0, 10.0], [0.0, 0.0], [5.0, 5.0], [20.0, 40.0]])
    sim = torch.tensor([0.95, 0.99, 0.91, 0.5, 0.89])
    fig = plot_matches(img_a, img_b, pa, pb, sim, threshold=0.9, title="pair")
    check_png(fig, tmp_path / "m.png")
    ax = fig.axes[0]
    assert ax.get_title().startswith("pair — 3 matches (cosine ≥ 0.90)")
    (lines,) = [c for c in ax.collections if isinstance(c, LineCollection)]
    segs = lines.get_segments()
    assert len(segs) == 3
    # drawn least similar first; image b is shown at half size right of image a
    gap = 0.03 * (60 + 50 * 0.5)
    np.testing.assert_allclose(segs[-1], [[20.0, 30.0], [60 + gap + 5.0, 5.0]])
    np.testing.assert_allclose(lines.get_array(), [0.91, 0.95, 0.99])
    assert lines.norm.vmin == pytest.approx(0.9) and lines.norm.vmax == 1.0
    assert any(a.get_ylabel() == "cosine similarity" for a in fig.axes)


def test_plot_matches_limits_lines_to_most_similar():
    g = torch.Generator().manual_seed(0)
    pos = torch.rand(50, 2, generator=g) * 30
    sim = torch.linspace(0.9, 1.0, 50)
    fig = plot_matches(torch.rand(3, 30, 30), torch.rand(3, 30, 30), pos, pos, sim, max_lines=10)
    ax = fig.axes[0]
    (lines,) = [c for c in ax.collections if isinstance(c, LineCollection)]
    assert len(lines.get_segments()) == 10
    assert float(lines.get_array().min()) == pytest.approx(float(sim[-10]))
    assert "50 matches" in ax.get_title() and "10 most similar shown" in ax.get_title()


def test_plot_matches_with_no_matches(tmp_path):
    fig = plot_matches(
        torch.rand(3, 20, 30),
        torch.rand(3, 25, 25),
        torch.zeros(0, 2),
        torch.zeros(0, 2),
        torch.zeros(0),
        threshold=None,
    )
    check_png(fig, tmp_path / "none.png")
    assert fig.axes[0].get_title().startswith("0 matches")


def test_plot_matches_errors():
    img = torch.rand(3, 20, 20)
    with pytest.raises(ValueError):
        plot_matches(img, img, torch.zeros(3, 3), torch.zeros(3, 2), torch.zeros(3))
    with pytest.raises(ValueError):
        plot_matches(img, img, torch.zeros(3, 2), torch.zeros(2, 2), torch.zeros(3))
    with pytest.raises(ValueError):
        plot_matches(img, img, torch.zeros(3, 2), torch.zeros(3, 2), torch.zeros(3), max_lines=-1)
    with pytest.raises(TypeError):
        plot_matches(img, img, "xy", torch.zeros(3, 2), torch.zeros(3))


# ---------------------------------------------------------------------------------------
# plot_retrieval
# ---------------------------------------------------------------------------------------


def spine_color(ax):
    return to_hex(ax.spines["left"].get_edgecolor())


def test_plot_retrieval_frames_scores_and_topk(tmp_path):
    g = torch.Generator().manual_seed(0)
    query = torch.rand(3, 30, 40, generator=g)
    results = [torch.rand(3, 30 + 5 * i, 40, generator=g) for i in range(6)]
    scores = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4]
    relevant = [True, False, True, False, True, True]
    fig = plot_retrieval(query, results, scores=scores, relevant=relevant, topk=4)
    check_png(fig, tmp_path / "r.png")
    panels = [ax for ax in fig.axes if ax.images]
    assert len(panels) == 5  # query + top 4
    assert panels[0].get_title() == "query"
    assert [spine_color(ax) for ax in panels[1:]] == ["#2ca02c", "#d62728", "#2ca02c", "#d62728"]
    assert [ax.get_xlabel() for ax in panels[1:]] == ["0.9", "0.8", "0.7", "0.6"]  # 4 significant digits
    assert panels[1].get_title() == "#1 ✓" and panels[2].get_title() == "#2 ✗"


def test_plot_retrieval_titles_and_no_relevance():
    results = [torch.rand(3, 20, 20) for _ in range(3)]
    names = ["a.jpg", "b.jpg", "a_very_long_file_name_that_cannot_fit_under_a_small_image.jpg"]
    fig = plot_retrieval(torch.rand(3, 20, 20), results, titles=names)
    panels = [ax for ax in fig.axes if ax.images]
    assert [ax.get_title() for ax in panels[1:3]] == ["a.jpg", "b.jpg"]
    long = panels[3].get_title()
    assert "…" in long and long.endswith(".jpg") and len(long) < len(names[2])
    assert len({spine_color(ax) for ax in panels[1:]}) == 1  # neutral frames
    assert all(ax.get_xlabel() == "" for ax in panels)


def test_plot_retrieval_without_results():
    fig = plot_retrieval(torch.rand(3, 20, 30), [])
    assert len([ax for ax in fig.axes if ax.images]) == 1


def test_plot_retrieval_errors():
    q = torch.rand(3, 10, 10)
    res = [torch.rand(3, 10, 10)] * 3
    with pytest.raises(ValueError):
        plot_retrieval(q, res, scores=[1.0, 2.0])
    with pytest.raises(ValueError):
        plot_retrieval(q, res, relevant=[True])
    with pytest.raises(ValueError):
        plot_retrieval(q, res, titles=["a", "b", "c", "d"])
    with pytest.raises(ValueError):
        plot_retrieval(q, res, topk=0)
    with pytest.raises(TypeError):
        plot_retrieval(q, SACRE_1)
    with pytest.raises(TypeError):
        plot_retrieval(q, torch.rand(3, 3, 10, 10))


# ---------------------------------------------------------------------------------------
# Real photos, saving, side effects
# ---------------------------------------------------------------------------------------


def test_figures_on_real_landmark_photos(tmp_path):
    img = Image.open(SACRE_1).convert("RGB")
    W, H = img.size
    sf = SuperFeatures(
        torch.randn(12, 8), torch.rand(12) * 4, gaussian_attention(12, H // 16, W // 16), 1.0
    )
    arr = check_png(plot_attention(SACRE_1, sf, top=8), tmp_path / "attention.png")
    assert arr.shape[0] > 100 and arr.shape[1] > 100

    with Image.open(SACRE_2) as im:
        Wb, Hb = im.size
    g = torch.Generator().manual_seed(0)
    pa = attention_centroids(sf.attention, (H, W))
    pb = torch.rand(12, 2, generator=g) * torch.tensor([Wb, Hb])
    fig = plot_matches(img, SACRE_2, pa, pb, torch.linspace(0.9, 1.0, 12), title="Sacré-Cœur")
    check_png(fig, tmp_path / "matches.png")

    fig = plot_retrieval(
        SACRE_1,
        [SACRE_2, STREET_1, STREET_2],
        scores=[0.8, 0.3, 0.2],
        relevant=[True, False, False],
        titles=["sacre_coeur2", "DSC_0410", "DSC_0411"],
    )
    check_png(fig, tmp_path / "retrieval.png")


def test_save_figure_pdf_and_errors(tmp_path, small_image, small_superfeatures):
    fig = plot_attention(small_image, small_superfeatures, top=2)
    out = tmp_path / "sub" / "dir" / "fig.PDF"
    save_figure(fig, out)
    with open(out, "rb") as f:
        assert f.read(5) == b"%PDF-"
    with pytest.raises(ValueError):
        save_figure(fig, tmp_path / "fig.jpg")
    with pytest.raises(ValueError):
        save_figure(fig, tmp_path / "fig.png", dpi=0)
    with pytest.raises(TypeError):
        save_figure("not a figure", tmp_path / "fig.png")


def test_plotting_leaves_global_state_alone(small_image, small_superfeatures):
    before = dict(matplotlib.rcParams)
    backend = matplotlib.get_backend()
    plot_attention(small_image, small_superfeatures, top=2)
    plot_matches(small_image, small_image, torch.zeros(1, 2), torch.zeros(1, 2), torch.ones(1))
    plot_retrieval(small_image, [small_image])
    assert dict(matplotlib.rcParams) == before
    assert matplotlib.get_backend() == backend


def test_import_does_not_load_pyplot_or_change_rcparams():
    code = (
        "import sys, matplotlib\n"
        "def snapshot():  # reading rcParams['backend'] would itself import pyplot\n"
        "    return {k: matplotlib.rcParams[k] for k in matplotlib.rcParams.keys() if k != 'backend'}\n"
        "before = snapshot()\n"
        "import lit.viz\n"
        "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot imported'\n"
        "assert snapshot() == before, 'rcParams changed'\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    res = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    assert res.returncode == 0, res.stderr


def test_plot_attention_normalises_each_map_for_display(small_image, small_superfeatures):
    idx = [7, 0, 3]
    fig = plot_attention(small_image, small_superfeatures, indices=idx, normalize="each")
    overlays = [ax.images[1] for ax in fig.axes if ax.images]
    for n, im in zip(idx, overlays):
        assert im.norm.vmax == pytest.approx(1.0)
        peak = float(small_superfeatures.attention[n].max())
        assert im.get_array().max() == pytest.approx(1.0, abs=0.05)  # the map over its own peak
    titles = [ax.get_title() for ax in fig.axes if ax.images]
    assert all("peak" in t for t in titles) and f"{peak:.2g}" in titles[-1]
    assert any(ax.get_ylabel() == "attention / map's peak" for ax in fig.axes)
    with pytest.raises(ValueError):
        plot_attention(small_image, small_superfeatures, normalize="global")


def test_save_figure_writes_svg(small_image, small_superfeatures, tmp_path):
    out = save_figure(plot_attention(small_image, small_superfeatures, top=2), tmp_path / "a.svg")
    assert "<svg" in open(out).read()


def test_svg_figures_are_accepted(tmp_path):
    from matplotlib.figure import Figure

    from lit.viz import save_figure

    path = save_figure(Figure(), tmp_path / "x.svg")
    assert open(path).read(200).lstrip().startswith("<?xml")


# plot_attention: each map over its own peak by default (as the command line), and portrait
# photos do not give a towering figure.

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


# plot_matches draws the matches it is given, from raw positions or from Matches and LocalFeatures.

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


# Retrieval figures keep the scene and the file of each name, and show a text query's words.

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
