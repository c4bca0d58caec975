"""``lit demo``: the whole pipeline on bundled real photos, offline, in about a minute on CPU.

1. The photo set: the real photos of ``lit/assets/photos`` (6 scenes, 2 photos each) plus
   two synthetic other views of each (kornia homographies and colour changes).
2. Extraction into an HDF5 feature file, an ASMK index, one query per real photo
   (positives: the other images of its scene), a result table with AP per query.
3. Figures in ``demo-figures/`` (``out_dir``; the README's ``figures/`` only when asked):
   attention maps, matches between the two Sacre-Coeur photos,
   and the retrieval result of the first query.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ._resources import asset_photos

VIEWS_PER_PHOTO = 2


def demo_model(device: str = "cpu"):
    """The best model shipped: ``lit-effl0`` when its weights are installed, else the
    ImageNet EfficientNet-Lite0 backbone with an untrained (seeded) LIT.

    Returns:
        ``(model, trained)``.
    """
    import lit
    from lit.errors import LitError
    from lit.models import SuperFeatureModel, lit_effl0_config

    if "lit-effl0" in lit.list_models():
        try:
            return lit.load_model("lit-effl0", device=device), True
        except LitError as err:
            print(f"lit-effl0 weights unusable ({err}); falling back to untrained LIT", file=sys.stderr)
    torch.manual_seed(0)
    model = SuperFeatureModel(lit_effl0_config(), pretrained_backbone=True).to(device).eval()
    return model, False


def make_photo_set(dst: Path, views: int = VIEWS_PER_PHOTO, seed: int = 0) -> list[tuple[str, str, bool]]:
    """Copy the bundled photos (downscaled to 512 px) and add synthetic views.

    Returns:
        ``(path, scene, is_real)`` for every image.
    """
    from PIL import Image

    from lit._image import load_image
    from lit.train.views import synthetic_view

    g = torch.Generator().manual_seed(seed)
    items = []
    assets = asset_photos()
    for scene in sorted(p.name for p in assets.iterdir() if p.is_dir()):
        (dst / scene).mkdir(parents=True, exist_ok=True)
        for photo in sorted((assets / scene).iterdir()):
            img = load_image(photo, 512)
            stem = photo.stem
            out = dst / scene / f"{stem}.png"
            _save(img, out, Image)
            items.append((str(out), scene, True))
            for v in range(views):
                view = synthetic_view(img, generator=g).image.clamp(0, 1)
                out = dst / scene / f"{stem}_view{v + 1}.png"
                _save(view, out, Image)
                items.append((str(out), scene, False))
    return items


def _save(t: torch.Tensor, path: Path, Image) -> None:
    arr = (t.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
    Image.fromarray(arr).save(path)


def run_demo(out_dir: str = "demo-figures", device: str = "cpu", work_dir: str | None = None) -> int:
    from lit import load_image, match, viz
    from lit.evaluate import compute_ap
    from lit.features import FeatureStore
    from lit.pipeline import extract_to_file

    t0 = time.perf_counter()
    os.makedirs(out_dir, exist_ok=True)
    tmp = None
    if work_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="lit-demo-")
        work_dir = tmp.name
    work = Path(work_dir)
    model, trained = demo_model(device)
    if trained:
        print("model: lit-effl0 (EfficientNet-Lite0 + LIT trained by lit, installed with lit)")
    else:
        print("model: ImageNet EfficientNet-Lite0 backbone + LIT with UNTRAINED (random) weights:")
        print("       the pipeline runs end to end, but the numbers below say little about the method.")
    items = make_photo_set(work / "images")
    paths = [p for p, _, _ in items]
    scenes = np.array([s for _, s, _ in items])
    print(f"photo set: {len(items)} images of {len(set(scenes))} scenes "
          f"({sum(r for _, _, r in items)} real photos + {VIEWS_PER_PHOTO} synthetic views of each)")

    if not model.has_reduction or not trained:  # PCA-whitening from the images themselves
        feats = []
        with torch.inference_mode():
            for p in paths[::2]:
                x = model.normalize(load_image(p, model.cfg.runtime.image_size)[None].to(model.device))
                feats.append(model.forward_superfeatures(x)[0][0].cpu())
        model.init_reduction(torch.cat(feats), shrinkage=0.5)

    from lit import pipeline

    t = time.perf_counter()
    feature_file = work / "features.h5"
    if feature_file.exists():
        feature_file.unlink()
    summary = extract_to_file(model, paths, feature_file, root=work / "images", progress=False)
    t_extract = time.perf_counter() - t
    with FeatureStore(feature_file) as store:
        all_feats = [store[i] for i in range(len(store))]
        n_desc = store.num_features
    t = time.perf_counter()
    with _quiet("lit.pipeline"):  # the demo says what it built below; the small-set warning is expected here
        index, info = pipeline.build_index(feature_file, image_root=work / "images", seed=0)
    t_index = time.perf_counter() - t

    queries = [i for i, (_, _, real) in enumerate(items) if real]
    results = pipeline.search(index, info, [all_feats[q] for q in queries], [info.names[q] for q in queries],
                              topk=None, exclude_self=True, query_root=info.image_root,
                              keep_unscored=True)  # every photo ranked: AP over the whole list
    print(f"\nextracted {summary.done} images in {t_extract:.1f} s, index built in {t_index:.1f} s "
          f"({n_desc} super-features, {index.num_words} visual words: lit.pipeline.codebook_size)\n")
    print(f"{'query':34s} {'AP':>6s}  top-3 (+ same scene)")
    aps = []
    for j, (q, res) in enumerate(zip(queries, results, strict=True)):
        relevant = np.array([pipeline.scene_of(h.name) == scenes[q] for h in res.hits])
        pos_ranks = np.flatnonzero(relevant)
        ap = compute_ap(pos_ranks, len(pos_ranks))
        aps.append(ap)
        top = ", ".join(("+" if relevant[r] else "-") + _strip(res.hits[r].name) for r in range(3))
        print(f"{_strip(res.query):34s} {100 * ap:6.1f}  {top}")
        if j == 0:
            first = (q, res, relevant)
    print(f"\nmAP over {len(queries)} queries: {100 * np.mean(aps):.1f}  (random ranking: about "
          f"{100 * (2 * VIEWS_PER_PHOTO + 2) / (len(items) - 1):.0f})")

    # figures
    sc = [i for i, (p, s, r) in enumerate(items) if s == "sacre_coeur" and r]
    img_a, img_b = load_image(paths[sc[0]]), load_image(paths[sc[1]])
    sf = model.superfeatures(img_a)
    fig = viz.plot_attention(img_a, sf, top=12, normalize="each",
                             title=f"sacre_coeur1, {'lit-effl0' if trained else 'untrained LIT'}, scale 1: "
                                   "strongest super-features")
    out1 = viz.save_figure(fig, os.path.join(out_dir, "demo_attention.png"))
    fa, fb = all_feats[sc[0]], all_feats[sc[1]]
    rule = model.match_rule()  # the model's own, saved with it: FIRe's 0.9, lit-effl0's background test
    thr = rule.threshold
    m = rule.match(fa, fb)
    if len(m) == 0:
        print(f"no match between the two Sacre-Coeur photos under the model's rule ({rule.describe()}): the "
              "figure shows the reciprocal neighbours at cosine >= 0.5")
        thr = 0.5
        m = match(fa, fb, threshold=thr)
    fig = viz.plot_matches(img_a, img_b, fa.positions[m.indices_a], fb.positions[m.indices_b], m.similarity,
                           threshold=thr, title="sacre_coeur1 - sacre_coeur2")
    out2 = viz.save_figure(fig, os.path.join(out_dir, "demo_matches.png"))
    q, res, relevant = first
    hits = res.hits[:8]
    fig = viz.plot_retrieval(paths[q], [os.path.join(info.image_root, h.name) for h in hits], scores=[h.score for h in hits],
                             relevant=list(relevant[:8]), topk=8, titles=[f"#{h.rank} {_strip(h.name)}" for h in hits],
                             query_title=f"query: {_strip(res.query)}")
    out3 = viz.save_figure(fig, os.path.join(out_dir, "demo_retrieval.png"))
    print(f"{len(m)} match{'' if len(m) == 1 else 'es'} between the two Sacre-Coeur photos ({rule.describe() if thr is rule.threshold else 'cosine >= 0.5'})")
    print(f"figures: {out1}, {out2}, {out3}")
    print(f"demo finished in {time.perf_counter() - t0:.1f} s")
    if tmp is not None:
        tmp.cleanup()
    return 0


@contextlib.contextmanager
def _quiet(logger: str):
    """Only errors of ``logger`` while the block runs."""
    log = logging.getLogger(logger)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def _strip(name: str) -> str:
    return name[:-4] if name.endswith(".png") else name
