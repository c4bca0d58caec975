"""Figures for super-features: attention maps, matches and retrieval results.

matplotlib only, and safe on headless machines: figures are built as
:class:`matplotlib.figure.Figure` objects directly (no ``pyplot`` state, no backend
switch, no global ``rcParams`` change), laid out with constrained layout, and returned
to the caller. Save them with :func:`save_figure`; in a notebook a returned figure is
displayed like any other.

Images may be given as a path, a PIL image, a ``(3, H, W)`` float tensor in ``[0, 1]``
or an ``(H, W, 3)`` uint8 numpy array (grayscale ``(H, W)`` also works). Pixel
coordinates follow the model's convention: ``(x, y)`` with ``x`` to the right, ``y``
down, pixel ``(i, j)`` covering ``[j, j + 1] x [i, i + 1]``, so that its centre is
``(j + 0.5, i + 0.5)``.

Example::

    sf = model.superfeatures(image)
    fig = plot_attention(image, sf, top=8)
    save_figure(fig, "attention.pdf")
"""

from __future__ import annotations

import operator
import os
import textwrap
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.collections import LineCollection
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from PIL import Image
from torch import Tensor

from ._image import open_image, pil_to_tensor
from .errors import NotFoundError, UsageError
from .models.model import attention_centroids
from .pipeline import QueryResult, plot_paths, scene_of
from .types import LocalFeatures, Matches, SuperFeatures

__all__ = [
    "attention_centroids",
    "plot_attention",
    "plot_matches",
    "plot_retrieval",
    "save_figure",
]

# One look for every figure: font sizes in points, colour maps, frame colours.
_TITLE_SIZE = 9
_LABEL_SIZE = 8
_ATTENTION_CMAP = "inferno"
_SIMILARITY_CMAP = "viridis"
_QUERY_COLOR = "#1f77b4"
_RELEVANT_COLOR = "#2ca02c"
_IRRELEVANT_COLOR = "#d62728"
_NEUTRAL_COLOR = "#999999"


# ---------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------


def _image_array(image) -> np.ndarray:
    """Any accepted image as an ``(H, W, 3)`` float32 array in ``[0, 1]``."""
    if isinstance(image, (str, os.PathLike)):
        image = open_image(image)
    if isinstance(image, Image.Image):
        return pil_to_tensor(image).permute(1, 2, 0).numpy()
    if isinstance(image, Tensor):
        t = image.detach().cpu()
        if t.ndim == 4 and t.shape[0] == 1:
            t = t[0]
        if t.ndim == 2:
            t = t.unsqueeze(0)
        if t.ndim != 3 or t.shape[0] not in (1, 3):
            raise UsageError(f"image tensor must have shape (3, H, W), got {tuple(image.shape)}")
        t = t.float() / 255.0 if t.dtype == torch.uint8 else t.float()
        arr = t.expand(3, -1, -1).permute(1, 2, 0).numpy()
    elif isinstance(image, np.ndarray):
        arr = image
        if arr.ndim == 2:
            arr = arr[:, :, None]
        if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
            raise UsageError(f"image array must have shape (H, W, 3), got {image.shape}")
        arr = arr[:, :, :3]
        if arr.dtype == np.bool_:
            arr = arr.astype(np.float32)
        elif np.issubdtype(arr.dtype, np.integer):
            arr = arr.astype(np.float32) / float(np.iinfo(arr.dtype).max)
        elif np.issubdtype(arr.dtype, np.floating):
            arr = arr.astype(np.float32)
        else:
            raise TypeError(f"unsupported image array dtype {arr.dtype}")
        arr = np.broadcast_to(arr, arr.shape[:2] + (3,))
    else:
        raise TypeError(
            "image must be a path, a PIL image, a (3, H, W) tensor or an (H, W, 3) array, "
            f"got {type(image).__name__}"
        )
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise UsageError(f"image is empty: {arr.shape[:2]}")
    return np.clip(np.nan_to_num(arr, nan=0.0), 0.0, 1.0)


def _as_numpy(x, name: str, dtype=np.float64) -> np.ndarray:
    """A tensor or array-like as a numeric numpy array (``dtype=None`` keeps floats as given)."""
    if isinstance(x, Tensor):
        x = x.detach().cpu()
        x = (x.float() if x.dtype == torch.bfloat16 else x).numpy()
    try:
        arr = np.asarray(x, dtype=dtype)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a tensor or array of numbers") from None
    if arr.dtype.kind not in "fiub":
        raise TypeError(f"{name} must be a tensor or array of numbers, got dtype {arr.dtype}")
    return arr


def _grayscale(img: np.ndarray) -> np.ndarray:
    return img @ np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _new_figure(figsize: tuple[float, float]) -> Figure:
    fig = Figure(figsize=figsize, layout="constrained")
    fig.get_layout_engine().set(w_pad=0.02, h_pad=0.02, wspace=0.02, hspace=0.02)
    return fig


def _check_int(value, name: str, minimum: int) -> int:
    try:
        if isinstance(value, (bool, np.bool_)):
            raise TypeError
        value = operator.index(value)  # ints, numpy ints, 0-dim integer tensors
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(value).__name__}") from None
    if value < minimum:
        raise UsageError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


# ---------------------------------------------------------------------------------------
# Attention
# ---------------------------------------------------------------------------------------


def plot_attention(
    image,
    superfeatures: SuperFeatures,
    indices: Sequence[int] | None = None,
    top: int = 16,
    ncols: int = 4,
    cmap: str = _ATTENTION_CMAP,
    *,
    show_centroids: bool = True,
    title: str | None = None,
    figsize: tuple[float, float] | None = None,
    normalize: str = "each",
) -> Figure:
    """Grid of super-feature attention maps overlaid on the image.

    Each panel shows one super-feature's attention map, upsampled bilinearly to the
    image size, over a grayscale copy of the image, titled with its template index ``n``
    and strength. With ``normalize="shared"`` all panels share one colour scale (0 to the
    largest value shown) and one colour bar in attention weights; with ``"each"`` every map
    is divided by its own peak (written in its title), so that maps that peak in a few cells
    stay visible, and the colour bar runs over 0..1 of each map's peak. A cyan ring marks each
    map's centroid (:func:`attention_centroids`).

    Args:
        image: the image the super-features were extracted from (any accepted form).
        superfeatures: output of ``model.superfeatures(image)``.
        indices: super-features to show, in this order; default: the ``top`` strongest.
        top: how many of the strongest to show when ``indices`` is ``None``.
        ncols: panels per row.
        cmap: matplotlib colour map of the attention.
        show_centroids: mark the centroid of each map.
        title: optional figure title.
        figsize: figure size in inches; default from ``ncols`` and the image aspect.
        normalize: ``"each"`` (default, as `lit plot-attention`: each map over its own peak) or ``"shared"`` (one scale).

    Returns:
        The figure.

    Raises:
        TypeError: ``superfeatures`` is not a :class:`~lit.types.SuperFeatures`.
        ValueError: attention not 3-D, strengths of the wrong length, indices out of
            range or empty, ``top`` or ``ncols`` below 1, another ``normalize``.

    Shape:
        - image: :math:`(3, H, W)` (or a path, PIL image, :math:`(H, W, 3)` array).
        - superfeatures.attention: :math:`(N, h, w)`; superfeatures.strengths: :math:`(N,)`.

    Example::

        fig = plot_attention("photo.jpg", model.superfeatures("photo.jpg"), top=8)
    """
    if not isinstance(superfeatures, SuperFeatures):
        raise TypeError(f"superfeatures must be SuperFeatures, got {type(superfeatures).__name__}")
    ncols = _check_int(ncols, "ncols", 1)
    img = _image_array(image)
    H, W = img.shape[:2]
    att = torch.as_tensor(superfeatures.attention).detach().cpu().float()
    if att.ndim != 3:
        raise UsageError(f"attention must have shape (N, h, w), got {tuple(att.shape)}")
    n_total = att.shape[0]
    strengths = _as_numpy(superfeatures.strengths, "strengths").reshape(-1)
    if strengths.shape[0] != n_total:
        raise UsageError(f"{strengths.shape[0]} strengths for {n_total} attention maps")
    if indices is None:
        top = _check_int(top, "top", 1)
        chosen = np.argsort(-strengths, kind="stable")[:top].tolist()
    else:
        chosen = [_check_int(i, "indices[...]", 0) for i in indices]
        bad = [i for i in chosen if i >= n_total]
        if bad:
            raise UsageError(f"indices {bad} out of range for {n_total} super-features")
    if not chosen:
        raise UsageError("nothing to plot: no super-features selected")

    if normalize not in ("shared", "each"):
        raise UsageError(f"normalize must be 'shared' or 'each', got {normalize!r}")
    maps = att[chosen]  # (k, h, w)
    peaks = maps.flatten(1).amax(1)
    if normalize == "each":
        maps = maps / peaks.clamp_min(1e-12)[:, None, None]
    up = F.interpolate(maps[None], size=(H, W), mode="bilinear", align_corners=False)[0].numpy()
    vmax = float(maps.max())
    vmin = min(0.0, float(maps.min()))
    norm = Normalize(vmin=vmin, vmax=vmax if vmax > vmin else vmin + 1e-12)
    centroids = attention_centroids(maps.clamp_min(0), (H, W)).numpy() if show_centroids else None

    k = len(chosen)
    ncols = min(ncols, k)
    nrows = -(-k // ncols)
    if figsize is None:
        panel_w = min(2.0, 7.0 / ncols, 1.9 * W / H + 0.1)  # portrait photos: panels at most ~2 inches high
        figsize = (
            panel_w * ncols + 0.8,
            nrows * ((panel_w - 0.1) * H / W + (0.45 if normalize == "each" else 0.3)) + (0.3 if title else 0.0),
        )
    fig = _new_figure(figsize)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    gray = _grayscale(img)
    cm = colormaps[cmap]
    for p, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if p >= k:
            continue
        n = chosen[p]
        ax.imshow(gray, cmap="gray", vmin=0.0, vmax=1.0, interpolation="antialiased")
        # opacity grows with the weight: the photo stays readable where attention is low
        alpha = 0.25 + 0.7 * np.sqrt(np.clip(norm(up[p]), 0.0, 1.0))
        ax.imshow(up[p], cmap=cm, norm=norm, alpha=alpha, interpolation="antialiased")
        if centroids is not None:
            ax.plot(*centroids[p], marker="o", markerfacecolor="none", color="cyan", markersize=11, mew=1.0)
        ax.set_xlim(0, W)
        ax.set_ylim(H, 0)
        label = f"n = {n}, strength {strengths[n]:.3g}"
        if normalize == "each":
            label += f"\npeak {float(peaks[p]):.2g}"
        ax.set_title(label, fontsize=_TITLE_SIZE)
    cbar = fig.colorbar(
        ScalarMappable(norm=norm, cmap=cm),
        ax=axes,
        shrink=min(0.9, 0.5 + 0.15 * nrows),
        aspect=25,
    )
    cbar.set_label("attention / map's peak" if normalize == "each" else "attention weight", fontsize=_LABEL_SIZE)
    cbar.ax.tick_params(labelsize=_LABEL_SIZE)
    cbar.formatter.set_powerlimits((-2, 3))
    cbar.ax.yaxis.get_offset_text().set_fontsize(_LABEL_SIZE)
    if title:
        fig.suptitle(title, fontsize=_TITLE_SIZE + 1)
    return fig


# ---------------------------------------------------------------------------------------
# Matches
# ---------------------------------------------------------------------------------------


_INLIER_COLOUR, _OUTLIER_COLOUR = "#1a9641", "#d7191c"


def _match_positions(positions_a, positions_b, similarity):
    """``(positions_a, positions_b, similarity)`` of the matches: as given, or taken from
    ``(LocalFeatures, LocalFeatures, Matches)``."""
    if not isinstance(similarity, Matches):
        if isinstance(positions_a, LocalFeatures) or isinstance(positions_b, LocalFeatures):
            raise UsageError("plot_matches: with LocalFeatures, give the Matches as the similarity argument: "
                             "plot_matches(img_a, img_b, fa, fb, m)")
        return positions_a, positions_b, similarity
    if not (isinstance(positions_a, LocalFeatures) and isinstance(positions_b, LocalFeatures)):
        raise UsageError("plot_matches: with Matches, give the LocalFeatures of both images: plot_matches(img_a, img_b, "
                         "fa, fb, m)")
    for name, f in (("image a", positions_a), ("image b", positions_b)):
        if f.positions is None:
            raise UsageError(f"plot_matches: the features of {name} have no positions")
    m = similarity
    pa, pb = positions_a.positions, positions_b.positions
    return pa[m.indices_a.to(pa.device)], pb[m.indices_b.to(pb.device)], m.similarity


def plot_matches(
    image_a,
    image_b,
    positions_a,
    positions_b,
    similarity,
    threshold: float | None = None,
    max_lines: int | None = 100,
    title: str | None = None,
    *,
    cmap: str = _SIMILARITY_CMAP,
    figsize: tuple[float, float] | None = None,
    inliers=None,
) -> Figure:
    """Two images side by side with lines linking matched positions.

    Image b is displayed at the height of image a. It plots the matches it is given (the
    match rule is the matcher's business: :meth:`SuperFeatureModel.match` or
    :func:`lit.match` decided them): lines and their end points are coloured by
    similarity with a colour bar, at most ``max_lines`` of them, the most similar (drawn
    last, on top). The title gives the number of matches (and how many are drawn when
    fewer). ``threshold`` optionally keeps only matches with similarity ``>= threshold``.

    With ``inliers`` (which matches survived geometric verification, e.g.
    ``lit.pipeline.verify_matches``), lines are drawn in two colours instead: inliers in
    green, the other matches in red, and the title counts both.

    Typical use (positions are in pixels of the images the features were extracted
    from, which :func:`lit.pipeline.match_images` returns with them)::

        img_a, img_b, fa, fb, m, rule = lit.pipeline.match_images(model, "a.jpg", "b.jpg")
        plot_matches(img_a, img_b, fa, fb, m)

    or with raw positions: ``plot_matches(img_a, img_b, positions_a, positions_b, similarity)``.

    Args:
        image_a: first image (any accepted form).
        image_b: second image.
        positions_a: ``(x, y)`` pixel position of each match in image a, or the
            :class:`~lit.types.LocalFeatures` of image a (with ``positions``).
        positions_b: the same for image b.
        similarity: similarity of each match, or the :class:`~lit.types.Matches`
            between the two feature sets (their positions are then taken from it).
        threshold: ``None`` (default): draw every match given; a number: only matches
            with similarity ``>= threshold``, and the bottom of the colour scale.
        max_lines: at most this many lines (``None``: all).
        title: optional text put before the match count.
        cmap: matplotlib colour map of the similarity.
        figsize: figure size in inches; default about 7.5 inches wide.
        inliers: boolean per match (``None``: colour by similarity).

    Returns:
        The figure.

    Raises:
        ValueError: positions not :math:`(M, 2)`, lengths that differ, ``max_lines < 0``.
        TypeError: non-numeric positions or similarities.

    Shape:
        - positions_a, positions_b: :math:`(M, 2)` as ``(x, y)`` pixels.
        - similarity: :math:`(M,)`.
    """
    img_a, img_b = _image_array(image_a), _image_array(image_b)
    positions_a, positions_b, similarity = _match_positions(positions_a, positions_b, similarity)
    pa = _as_numpy(positions_a, "positions_a")
    pb = _as_numpy(positions_b, "positions_b")
    sim = _as_numpy(similarity, "similarity", dtype=None).reshape(-1)
    if not np.issubdtype(sim.dtype, np.floating):
        sim = sim.astype(np.float64)
    pa = pa.reshape(0, 2) if pa.size == 0 else pa
    pb = pb.reshape(0, 2) if pb.size == 0 else pb
    for name, p in (("positions_a", pa), ("positions_b", pb)):
        if p.ndim != 2 or p.shape[1] != 2:
            raise UsageError(f"{name} must have shape (M, 2), got {p.shape}")
    if not (pa.shape[0] == pb.shape[0] == sim.shape[0]):
        raise UsageError(
            f"lengths differ: {pa.shape[0]} positions_a, {pb.shape[0]} positions_b, "
            f"{sim.shape[0]} similarities"
        )
    if max_lines is not None:
        max_lines = _check_int(max_lines, "max_lines", 0)
    inl = None
    if inliers is not None:
        inl = _as_numpy(inliers, "inliers", dtype=None).reshape(-1).astype(bool)
        if inl.shape[0] != sim.shape[0]:
            raise UsageError(f"lengths differ: {inl.shape[0]} inlier flags, {sim.shape[0]} similarities")

    # compare in the dtype of the similarities, as lit.match does (0.9 in float32 is kept)
    keep = np.isfinite(sim) if threshold is None else sim >= np.asarray(threshold, dtype=sim.dtype)
    order = np.flatnonzero(keep)[np.argsort(-sim[keep], kind="stable")]
    n_matches = order.size
    drawn = order if max_lines is None else order[:max_lines]
    drawn = drawn[::-1]  # least similar first, so that the best lines end on top
    if inl is not None:  # outliers first, inliers on top
        drawn = np.concatenate([drawn[~inl[drawn]], drawn[inl[drawn]]])

    ha, wa = img_a.shape[:2]
    hb, wb = img_b.shape[:2]
    s = ha / hb
    gap = 0.03 * (wa + wb * s)
    x0 = wa + gap
    total_w = x0 + wb * s

    lo = (
        float(threshold)
        if threshold is not None
        else (float(sim[keep].min()) if n_matches else 0.0)
    )
    lo = min(lo, 1.0 - 1e-3)
    norm = Normalize(vmin=lo, vmax=1.0)
    cm = colormaps[cmap]

    if figsize is None:
        width = 7.5
        figsize = (width, (width - 0.7) * ha / total_w + 0.45)
    fig = _new_figure(figsize)
    ax = fig.add_subplot()
    ax.imshow(img_a, extent=(0, wa, ha, 0), interpolation="antialiased")
    ax.imshow(img_b, extent=(x0, total_w, ha, 0), interpolation="antialiased")
    if drawn.size:
        xa, ya = pa[drawn, 0], pa[drawn, 1]
        xb, yb = x0 + pb[drawn, 0] * s, pb[drawn, 1] * s
        segments = np.stack([np.stack([xa, ya], 1), np.stack([xb, yb], 1)], axis=1)
        ends_x, ends_y = np.concatenate([xa, xb]), np.concatenate([ya, yb])
        if inl is None:
            lines = LineCollection(segments, cmap=cm, norm=norm, linewidths=1.0, alpha=0.85)
            lines.set_array(sim[drawn])
            ax.add_collection(lines)
            ax.scatter(ends_x, ends_y, c=np.tile(sim[drawn], 2), cmap=cm, norm=norm, s=9, edgecolors="white",
                       linewidths=0.4, zorder=3)
        else:
            colours = np.where(inl[drawn], _INLIER_COLOUR, _OUTLIER_COLOUR)
            ax.add_collection(LineCollection(segments, colors=list(colours), linewidths=1.2, alpha=0.9))
            ax.scatter(ends_x, ends_y, c=list(np.tile(colours, 2)), s=9, edgecolors="white", linewidths=0.4, zorder=3)
    ax.set_xlim(0, total_w)
    ax.set_ylim(ha, 0)
    ax.set_aspect("equal")
    ax.set_axis_off()

    cond = f"cosine ≥ {threshold:.2f}" if threshold is not None else "all"
    text = f"{n_matches} match{'es' if n_matches != 1 else ''} ({cond})"
    if inl is not None:
        text += f": {int(inl[order].sum())} verified (green), {int((~inl[order]).sum())} not (red)"
    if drawn.size < n_matches:
        text += f", {drawn.size} most similar shown"
    ax.set_title(f"{title} — {text}" if title else text, fontsize=_TITLE_SIZE)
    if inl is None:
        cbar = fig.colorbar(ScalarMappable(norm=norm, cmap=cm), ax=ax, shrink=0.85, aspect=20, pad=0.01)
        cbar.set_label("cosine similarity", fontsize=_LABEL_SIZE)
        cbar.ax.tick_params(labelsize=_LABEL_SIZE)
    return fig


# ---------------------------------------------------------------------------------------
# Retrieval
# ---------------------------------------------------------------------------------------


def _short(text: str, width: int) -> str:
    """At most two lines of at most ``width`` characters (three for a path). Lines break at
    spaces and after the ``/`` of paths (``scene/`` then ``photo.jpg``); a path too long
    loses its leading folders (``…/scene/photo.jpg``: the photo and its scene stay
    readable); long words lose their middle."""
    width = max(8, width)
    text = str(text)
    lines = _wrap_path(text, width)
    if len(lines) > 2 and "/" in text:  # a path: up to 3 lines, leading folders dropped first
        head, _, path = text.rpartition(" ") if " " in text else ("", "", text)
        parts = path.split("/")
        for drop in range(0, len(parts)):
            shorter = (head + " " if head else "") + ("…/" if drop else "") + "/".join(parts[drop:])
            lines = _wrap_path(shorter, width)
            if len(lines) <= 3:
                break
        if len(lines) <= 3:
            return "\n".join(lines)
    if len(lines) > 2:
        lines = textwrap.wrap(" ".join(lines), width=width, break_long_words=False, max_lines=2, placeholder=" …")
    out = []
    for line in lines:
        if len(line) > width:
            keep = width - 1
            line = line[: (keep + 1) // 2] + "…" + line[len(line) - keep // 2 :]
        out.append(line)
    return "\n".join(out)


def _wrap_path(text: str, width: int) -> list[str]:
    """``textwrap.wrap`` that may also break after a ``/`` (never at a hyphen)."""
    keep = width - 2
    words = [w if len(w) <= width - 1 else w[: (keep + 1) // 2] + "…" + w[len(w) - keep // 2 :]
             for w in text.replace("/", "/\x00 ").split(" ")]
    return [line.replace("/\x00 ", "/").replace("/\x00", "/") for line in textwrap.wrap(
        " ".join(words), width=width + 1, break_long_words=False, break_on_hyphens=False)]


def plot_retrieval(
    query,
    results: Sequence,
    scores=None,
    relevant: Sequence[bool] | None = None,
    topk: int = 10,
    titles: Sequence[str] | None = None,
    *,
    query_title: str = "query",
    query_text: str | None = None,
    panel_height: float = 1.6,
    figsize: tuple[float, float] | None = None,
) -> Figure:
    """The query and its top-k database images in one strip.

    Every image is shown at the same height. The query has a blue frame. With
    ``relevant``, result frames are green (relevant, ✓) or red (not relevant, ✗); with
    ``scores``, each score is written under its image. Results are titled with their
    rank (``#1`` ...) or with ``titles``.

    Args:
        query: the query image (any accepted form); ``None`` for a text query.
        results: ranked database images, best first; only the first ``topk`` are shown.
        scores: optional score of each result.
        relevant: optional relevance (bool) of each result.
        topk: how many results to show.
        titles: optional title of each result (e.g. file names), shortened to fit.
        query_title: title of the query panel.
        query_text: a text query, written in the query panel (with ``query=None``).
        panel_height: height of each image in inches (sets the default figure size).
        figsize: figure size in inches, overriding ``panel_height``.

    Returns:
        The figure.

    Raises:
        TypeError: ``results`` is not a sequence of images.
        ValueError: ``scores``, ``relevant`` or ``titles`` of another length than
            ``results``; ``topk < 1``.

    Shape:
        - scores, relevant, titles: :math:`(R,)` for :math:`R` = ``len(results)``.

    Example::

        fig = plot_retrieval(q_path, [db[i] for i in ranks[:5]], scores=s[:5], topk=5)
    """
    if isinstance(results, (str, os.PathLike, Image.Image, np.ndarray, Tensor)) or not isinstance(
        results, Sequence
    ):
        raise TypeError(f"results must be a list of images, got {type(results).__name__}")
    topk = _check_int(topk, "topk", 1)
    n_res = len(results)
    if scores is not None:
        scores = _as_numpy(scores, "scores").reshape(-1)
    if relevant is not None:
        relevant = [bool(r) for r in relevant]
    if titles is not None:
        titles = [str(t) for t in titles]
    for name, v in (("scores", scores), ("relevant", relevant), ("titles", titles)):
        if v is not None and len(v) != n_res:
            raise UsageError(f"{name} has {len(v)} entries for {n_res} results")

    shown = min(topk, n_res)
    if query is None and query_text is None:
        raise UsageError("plot_retrieval: give a query image or a query_text")
    blank = np.ones((64, 64, 3), np.float32)  # the panel of a text query
    images = [blank if query is None else _image_array(query)] + [_image_array(r) for r in results[:shown]]
    ratios = [im.shape[1] / im.shape[0] for im in images]
    spacer = 0.12
    width_ratios = [ratios[0], spacer] + ratios[1:] if shown else [ratios[0]]
    if figsize is None:
        extra = 0.25 + (0.2 if scores is not None else 0.0)
        figsize = (panel_height * sum(width_ratios) + 0.2, panel_height + extra + 0.1)
    fig = _new_figure(figsize)
    axes = fig.subplots(1, len(width_ratios), squeeze=False, width_ratios=width_ratios)[0]
    if shown:
        axes[1].set_axis_off()
        panels = [axes[0]] + list(axes[2:])
    else:
        panels = [axes[0]]

    fig.get_layout_engine().set(w_pad=0.06)
    chars_per_inch = 14
    for p, (ax, im) in enumerate(zip(panels, images, strict=True)):
        ax.imshow(im, interpolation="antialiased")
        ax.set_xticks([])
        ax.set_yticks([])
        width_chars = int(ratios[p] * panel_height * chars_per_inch)
        if p == 0:
            color, lw = _QUERY_COLOR, 3.0
            ax.set_title(_short(query_title, width_chars), fontsize=_TITLE_SIZE, fontweight="bold")
            if query is None:
                ax.text(0.5, 0.5, "\n".join(textwrap.wrap(f"“{query_text}”", 14, max_lines=5, placeholder=" …")),
                        transform=ax.transAxes, ha="center", va="center", fontsize=_TITLE_SIZE, wrap=True)
        else:
            r = p - 1
            label = titles[r] if titles is not None else f"#{r + 1}"
            if relevant is None:
                color, lw = _NEUTRAL_COLOR, 0.8
                label = _short(label, width_chars)
            else:
                color, lw = (_RELEVANT_COLOR, 3.0) if relevant[r] else (_IRRELEVANT_COLOR, 3.0)
                label = f"{_short(label, width_chars - 2)} {'✓' if relevant[r] else '✗'}"
            ax.set_title(
                label, fontsize=_TITLE_SIZE, color=color if relevant is not None else "black"
            )
            if scores is not None:
                ax.set_xlabel(f"{scores[r]:.4g}", fontsize=_LABEL_SIZE)
        for spine in ax.spines.values():
            spine.set_visible(True)
            spine.set_color(color)
            spine.set_linewidth(lw)
    return fig


# ---------------------------------------------------------------------------------------
# Saving
# ---------------------------------------------------------------------------------------


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = 150) -> str:
    """Write a figure as PNG, PDF or SVG, chosen by the file extension.

    Missing parent directories are created.

    Args:
        fig: a figure returned by the functions of this module (any matplotlib figure).
        path: output file ending in ``.png``, ``.pdf`` or ``.svg`` (case-insensitive).
        dpi: resolution of the PNG (and of images embedded in the PDF).

    Returns:
        The path written, as a string.

    Raises:
        TypeError: ``fig`` is not a matplotlib figure.
        ValueError: another extension, or ``dpi <= 0``.
    """
    if not isinstance(fig, Figure):
        raise TypeError(f"fig must be a matplotlib Figure, got {type(fig).__name__}")
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    if ext not in (".png", ".pdf", ".svg"):
        raise UsageError(f"{path}: unsupported extension {ext!r}; use .png, .pdf or .svg")
    if not dpi > 0:
        raise UsageError(f"dpi must be > 0, got {dpi}")
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    from ._fileio import atomic_path

    with atomic_path(path) as tmp:  # a reader (or a crash) never sees half a figure
        fig.savefig(tmp, dpi=dpi, format=ext[1:])
    return path


def plot_search_results(results: Sequence[QueryResult], out: str | os.PathLike, db_root: str, query_root: str | None,
                 topk: int = 8) -> list[str]:
    """One retrieval figure per query (:func:`plot_retrieval`), titled with names
    and scores; correct / incorrect marks when query and results sit in scene folders.

    Raises:
        PipelineError: an image to show does not exist (names the folder option to fix it).
    """
    written = []
    for r, path in zip(results, plot_paths(out, len(results)), strict=True):
        qpath = os.path.join(query_root, r.query) if query_root else r.query
        if not os.path.isfile(qpath):
            raise NotFoundError(f"{qpath}: query image not found for --plot (give its folder with --query-root)")
        hits = r.hits[:topk]
        dbp = [os.path.join(db_root, h.name) for h in hits]
        missing = [p for p in dbp if not os.path.isfile(p)]
        if missing:
            raise NotFoundError(f"{missing[0]}: database image not found for --plot (give its folder with --db-root)")
        qs = scene_of(r.query)
        rel = None
        if qs is not None and all(scene_of(h.name) is not None for h in hits):
            rel = [scene_of(h.name) == qs for h in hits]
        fig = plot_retrieval(qpath, dbp, scores=[h.score for h in hits], relevant=rel, topk=topk,
                                 titles=[f"#{h.rank} {h.name}" + (f" (support {h.support})" if getattr(h, "support", None)
                                                                  else "") for h in hits], query_title=f"query: {r.query}")
        written.append(save_figure(fig, path))
    return written
