"""Retrieval on a folder-per-scene photo set: every image is a query, its positives are
the other photos of its scene folder. Prints a table of mAP and Recall@1, and JSON.

Compared models (``--models``, comma-separated, default all):
  - ``fire-random``: FIRe architecture (ResNet-50 + LIT 6/256/1024) with random weights,
  - ``effl0-untrained``: ImageNet EfficientNet-Lite0 + untrained (seeded) LIT,
  - ``effl0-kmeans``: the same LIT initialised from the codebook photos' local features
    as lit-effl0's recipe initialises it (``init.lit=kmeans`` of the trainer: k-means
    templates of the strong features and a background template for the weak ones) but
    never trained; it shows what training adds to that initialisation,
  - ``lit-effl0``: the model trained by lit and shipped in ``weights/``,
  - ``gem-effl0``: global GeM descriptor (p = 3) of the same ImageNet EfficientNet-Lite0
    (last stage, stride 32), cosine similarity,
  - ``gem-effl0-os16``: the same with the last stage dilated to stride 16, as in
    ``lit-effl0``'s backbone,
  - or any checkpoint path.
Super-feature models are scored with ASMK (binary, alpha 3). As in FIRe's protocol (codebook
learned on SfM-120k, never on the test set), the codebook (``--codebook-size`` words, default
the policy of ``lit index``: :func:`lit.pipeline.codebook_size`) is learned on photos that are not evaluated, the same photos
for every model: ``--codebook auto`` (default) takes the root's scene folders that are not
evaluated, and when every scene is evaluated (a folder of new scenes), the reference photos
lit has at hand: the default multi-view set beside the repository and the photos bundled
with lit, minus the evaluated photos and any resized or re-encoded copies of them (found by
difference hash). ``rest`` and ``reference`` insist on one of these, a folder path takes its
photos, and ``evaluated`` learns it on the evaluated photos themselves (the old protocol:
with few photos it fits the very descriptors it scores; ``auto`` falls back to it, and says
so, only when nothing else is left). Metrics are averaged over
``--seeds`` k-means seeds (small sets are noisy). Models without a learned reduction are
given a PCA-whitening learned on the codebook photos.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch

from ..errors import UsageError

log = logging.getLogger(__name__)

DEFAULT_ROOT = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "multiview"
GEM_OUTPUT_STRIDE = {"gem-effl0": None, "gem-effl0-os16": 16}
ALL = ("fire-random", "effl0-untrained", "effl0-kmeans", "lit-effl0", *GEM_OUTPUT_STRIDE)
UNTRAINED = ("fire-random", "effl0-untrained", "effl0-kmeans")
# the LIT initialisation of lit-effl0's recipe (configs/lit_effl0.yaml, init.lit_*), given to
# effl0-kmeans so that it shows what training adds to exactly that starting point
KMEANS_INIT = {"sharpness": 100.0, "background": 2.0, "background_fraction": 0.5}
# a difference hash within this many bits (of 64) marks a copy of a photo (resized, re-encoded);
# copies measure 0, different photos of the bundled and multi-view sets 12 or more
NEAR_DUPLICATE_BITS = 6
# the multi-view scenes lit-effl0 never saw in training (weights/recipes/make_lit_effl0.py, and the
# checkpoint's meta "held_out_scenes"); its training photos are the other scenes
LIT_EFFL0_HELD_OUT = (
    "terrace", "wxbs-wgabs-petrzin", "wxbs-wgalbs-bridge", "wxbs-wgalbs-kyiv_dolltheater",
    "wxbs-wgalbs-kyiv_dolltheater2", "wxbs-wgalbs-stadium", "wxbs-wgalbs-zanky", "wxbs-wglbs-berlin",
    "wxbs-wglbs-him", "wxbs-wglbs-silasveta2",
)


def scene_images(root: str | os.PathLike, scenes: list[str] | None = None) -> tuple[list[str], np.ndarray, list[str]]:
    """Image paths, scene label per image, and scene names of a folder-per-scene set."""
    from lit._image import list_images

    root = Path(root)
    names = sorted(p.name for p in root.iterdir() if p.is_dir())
    if scenes:
        unknown = set(scenes) - set(names)
        if unknown:
            raise UsageError(f"{root}: no scene folder(s) {sorted(unknown)}")
        names = [n for n in names if n in scenes]
    paths, labels = [], []
    for i, n in enumerate(names):
        imgs = list_images(root / n)
        paths += imgs
        labels += [i] * len(imgs)
    return paths, np.array(labels), names


def ranking_metrics(relevant: list[np.ndarray], positives: list[int] | None = None, ks: tuple[int, ...] = ()) -> dict:
    """mAP, Recall@1 and mean precision at each ``k`` of ranked lists: ``relevant[q]`` says
    which entries of query ``q``'s list (best first) show its scene, ``positives[q]`` how
    many there are in all (default: those in the list; a positive missing from the list
    counts as never found). Queries without positives are left out."""
    from lit.evaluate import compute_ap

    aps, r1, pk = [], [], {k: [] for k in ks}
    for q, rel in enumerate(relevant):
        rel = np.asarray(rel, dtype=bool)
        total = int(rel.sum()) if positives is None else int(positives[q])
        if total == 0:
            continue
        aps.append(compute_ap(np.flatnonzero(rel), total))
        r1.append(bool(rel[:1].any()))
        for k in ks:
            pk[k].append(float(rel[:k].sum() / k))
    out = {"map": 100 * float(np.mean(aps)), "recall@1": 100 * float(np.mean(r1)), "queries": len(aps),
           "ap": [100 * float(a) for a in aps]}
    out.update({f"mp@{k}": 100 * float(np.mean(v)) for k, v in pk.items()})
    return out


def retrieval_metrics(scores: np.ndarray, labels: np.ndarray, ks: tuple[int, ...] = ()) -> dict:
    """mAP and Recall@1 (top-1 correct) of an (n x n) score matrix, self excluded,
    positives = same label; with ``ks`` also the mean precision at each k (``mp@k``:
    the share of the first k results that show the query's scene)."""
    n = len(labels)
    relevant = []
    for q in range(n):
        s = scores[q].astype(np.float64).copy()
        s[q] = -np.inf
        order = np.argsort(-s, kind="stable")[: n - 1]
        relevant.append(labels[order] == labels[q])
    return ranking_metrics(relevant, ks=ks)


def paired_comparison(ap_a, ap_b, groups, boot: int = 10000, seed: int = 0) -> dict:
    """Model A minus model B on the same queries: mean AP difference, queries won/tied/lost,
    and a 95 % bootstrap interval of the difference that resamples whole scenes (``groups``:
    the scene of each query; the queries of a scene are not independent).
    """
    a, b, groups = np.asarray(ap_a, float), np.asarray(ap_b, float), np.asarray(groups)
    if not (a.shape == b.shape == groups.shape):
        raise UsageError(f"per-query APs and scenes differ in length: {a.shape}, {b.shape}, {groups.shape}")
    d = a - b
    scenes = np.unique(groups)
    sums = np.array([d[groups == g].sum() for g in scenes])
    counts = np.array([(groups == g).sum() for g in scenes])
    pick = np.random.default_rng(seed).integers(0, len(scenes), size=(boot, len(scenes)))
    means = sums[pick].sum(1) / counts[pick].sum(1)
    lo, hi = np.quantile(means, [0.025, 0.975])
    return {"map_difference": float(d.mean()), "ci95": [float(lo), float(hi)], "better": int((d > 1e-9).sum()),
            "same": int((np.abs(d) <= 1e-9).sum()), "worse": int((d < -1e-9).sum()), "scenes": len(scenes)}


def superfeature_model(name: str, device: str):
    import lit
    from lit.models import ModelConfig, SuperFeatureModel, lit_effl0_config

    torch.manual_seed(0)
    if name == "fire-random":
        from dataclasses import replace

        cfg = ModelConfig()
        cfg = replace(cfg, runtime=replace(cfg.runtime, image_size=640))
        return SuperFeatureModel(cfg).to(device).eval()
    if name in ("effl0-untrained", "effl0-kmeans"):
        return SuperFeatureModel(lit_effl0_config(), pretrained_backbone=True).to(device).eval()
    return lit.load_model(name, device=device)


def reference_folders() -> list[Path]:
    """Photos lit has at hand that a codebook can be learned on when every scene of the root
    is evaluated: the default multi-view set (beside the repository) and the bundled photos."""
    import lit

    bundled = Path(lit.__file__).parent / "assets" / "photos"
    return [f for f in (DEFAULT_ROOT, bundled) if f.is_dir()]


def _not_copies(photos: list[str], evaluated: list[str], max_bits: int = NEAR_DUPLICATE_BITS) -> list[str]:
    """``photos`` minus near-duplicates of the evaluated ones (resized or re-encoded copies,
    by difference hash); unreadable photos are left out and reported."""
    from lit._image import ImageReadError, difference_hash, hash_distance

    hashes = []
    for p in evaluated:
        try:
            hashes.append(difference_hash(p))
        except ImageReadError:
            pass  # the evaluation itself reports it
    keep = []
    for p in photos:
        try:
            h = difference_hash(p)
        except ImageReadError as err:
            log.warning(f"codebook photo skipped: {err}")
            continue
        if all(hash_distance(h, e) > max_bits for e in hashes):
            keep.append(p)
    return keep


def codebook_photos(choice: str, root: str | os.PathLike, evaluated: list[str],
                    reference: list[str | os.PathLike] | None = None) -> tuple[list[str], str]:
    """Photos the ASMK codebook (and any PCA-whitening) is learned on, and what they are.

    ``choice``: ``"auto"``, ``"rest"``, ``"reference"``, ``"evaluated"`` or a folder (see the
    module doc). ``reference``: the folders of ``"reference"`` (default :func:`reference_folders`).
    """
    from lit._image import list_images

    taken = set(map(os.path.realpath, evaluated))
    if choice not in ("auto", "rest", "reference", "evaluated"):
        photos = list_images(choice)
        if not photos:
            raise UsageError(f"{choice}: no photos for the codebook")
        overlap = set(map(os.path.realpath, photos)) & taken
        if overlap:
            raise UsageError(f"{choice}: {len(overlap)} codebook photo(s) are evaluated too, e.g. {sorted(overlap)[0]}")
        return photos, choice
    if choice == "evaluated":
        return list(evaluated), "the evaluated photos"
    if choice in ("auto", "rest"):
        rest = [p for p in scene_images(root)[0] if os.path.realpath(p) not in taken]
        if rest:
            return rest, f"the {len(rest)} photos of {root} that are not evaluated"
        if choice == "rest":
            raise UsageError(f"{root}: every scene is evaluated, none is left for the codebook "
                             "(choose scenes, or --codebook reference / evaluated / a folder)")
    folders = reference_folders() if reference is None else [Path(f) for f in reference]
    found = sorted({os.path.realpath(p) for f in folders for p in list_images(f)} - taken)
    photos = _not_copies(found, evaluated)
    if photos:
        return photos, (f"{len(photos)} reference photos of {', '.join(map(str, folders))} "
                        f"(not evaluated, nor copies of evaluated ones)")
    if choice == "reference":
        raise UsageError(f"no reference photos that are not evaluated in {', '.join(map(str, folders)) or '(none)'}")
    return list(evaluated), "the evaluated photos (every scene of the root is evaluated, no reference photos)"


def extract_all(model, paths: list[str]) -> list:
    """``model.extract`` of each photo, loaded at the model's runtime image size."""
    from lit._image import load_image

    return [model.extract(load_image(p, model.cfg.runtime.image_size)) for p in paths]


def kmeans_init_on(model, paths, device, init: dict | None = None):
    """``init.lit=kmeans`` of the trainer (``init``: its ``init_lit_from_tokens`` options,
    default :data:`KMEANS_INIT`), on the backbone tokens of ``paths`` (scale 1)."""
    from lit._image import load_image
    from lit.models import init_lit_from_tokens
    from lit.train.trainer import backbone_tokens

    def load(i):
        return load_image(paths[i], model.cfg.runtime.image_size).to(device)

    tokens = backbone_tokens(model, load, range(len(paths)))
    if len(tokens) < model.cfg.lit.N:
        raise UsageError(f"the {len(paths)} codebook photos give {len(tokens)} local features, fewer than the "
                         f"{model.cfg.lit.N} templates to initialise: use more or larger photos")
    init_lit_from_tokens(model.lit, tokens, **(KMEANS_INIT if init is None else init))


def whiten_on(model, paths, device):
    from lit._image import load_image

    feats = []
    with torch.inference_mode():
        for p in paths:
            x = model.normalize(load_image(p, model.cfg.runtime.image_size)[None].to(device))
            feats.append(model.forward_superfeatures(x)[0][0].cpu())
    feats = torch.cat(feats)
    dim = min(128, model.cfg.lit.dim, len(feats) - 1)
    if model.cfg.reduction_dim is None:
        model.init_reduction(feats, shrinkage=0.5, dim=dim)
    else:
        model.init_reduction(feats, shrinkage=0.5)


def asmk_scores(feats: list, codebook_size: int | None = None, seed: int = 0, codebook_feats: list | None = None) -> np.ndarray:
    """All-pairs ASMK scores of ``feats``; the codebook is learned on ``codebook_feats``
    (default: ``feats`` themselves) with ``codebook_size`` words (default: the pipeline's
    policy, :func:`lit.pipeline.codebook_size`)."""
    from lit.asmk import ASMK
    from lit.pipeline import codebook_size as policy

    desc = torch.cat([f.descriptors.cpu() for f in feats]).numpy()
    ids = np.concatenate([np.full(len(f), i) for i, f in enumerate(feats)])
    train = desc if codebook_feats is None else torch.cat([f.descriptors.cpu() for f in codebook_feats]).numpy()
    size = policy(len(train)) if codebook_size is None else max(1, min(codebook_size, len(train) // 2))
    index = ASMK.train(train, size=size, seed=seed, iterations=15)
    index.add(desc, ids)
    return np.asarray(index.scores(desc, ids))


def gem_scores(paths: list[str], device: str, image_size: int = 512, output_stride: int | None = None) -> np.ndarray:
    from lit._image import load_image
    from lit.metric.pooling import gem
    from lit.models import BackboneConfig
    from lit.models.backbone import create_backbone

    net = create_backbone(BackboneConfig("tf_efficientnet_lite0", 4, output_stride), pretrained=True).to(device).eval()
    vecs = []
    with torch.inference_mode():
        for p in paths:
            x = (load_image(p, image_size)[None].to(device) - 0.5) / 0.5
            f = net(x)
            vecs.append(torch.nn.functional.normalize(gem(f, 3.0).flatten(1), dim=1)[0].cpu())
    v = torch.stack(vecs)
    return (v @ v.T).numpy()


def evaluate_folder(root: str | os.PathLike, model: str = "lit-effl0", *, device: str = "cpu",
                    codebook: str = "auto", codebook_size: int | None = None, seeds: int = 1,
                    ks: tuple[int, ...] = (1, 5, 10)) -> dict:
    """Retrieval quality of a super-feature model on a folder-per-scene photo set (``lit
    evaluate --folder``): every photo is a query, its positives are the other photos of its
    scene folder; ASMK scores, the codebook learned as :func:`codebook_photos` says
    (``auto``: photos that are not evaluated), mean over ``seeds`` k-means seeds.

    Returns:
        ``{"root", "model", "images", "scenes", "codebook", "codebook_images", "map",
        "map_std", "recall@1", "mp@k"..., "queries", "per_scene": {scene: mAP}, "table"}``
        (percentages; ``table`` is the printed summary).

    Raises:
        UsageError: the folder has no scene folder with two photos or more.
    """
    if not os.path.isdir(root):
        raise UsageError(f"{root}: not a folder (give a folder with one sub-folder of photos per scene)")
    paths, labels, scenes = scene_images(root)
    counts = np.bincount(labels, minlength=len(scenes)) if len(labels) else np.zeros(0, int)
    if not (counts >= 2).any():
        raise UsageError(f"{root}: needs scene sub-folders with two photos or more each (found {len(scenes)} folders, "
                         f"{len(paths)} photos)")
    cb_paths, cb_what = codebook_photos(codebook, root, paths)
    log.info(f"{len(paths)} photos of {len(scenes)} scenes; codebook learned on {cb_what}")
    net = superfeature_model(model, device)
    feats = _extract_progress(net, paths, "evaluated photos")
    cb_feats = None if cb_paths == paths else _extract_progress(net, cb_paths, "codebook photos")
    runs = [retrieval_metrics(asmk_scores(feats, codebook_size, seed=s, codebook_feats=cb_feats), labels, ks)
            for s in range(seeds)]
    res = {k: float(np.mean([r[k] for r in runs])) for k in ("map", "recall@1", *(f"mp@{k}" for k in ks))}
    res["map_std"] = float(np.std([r["map"] for r in runs]))
    ap = np.mean([r["ap"] for r in runs], axis=0)
    with_pos = np.array([counts[lab] > 1 for lab in labels])
    per_scene = {scenes[g]: float(ap[labels[with_pos] == g].mean()) for g in np.unique(labels[with_pos])}
    out = {"root": os.fspath(root), "model": model, "images": len(paths), "scenes": len(scenes), "codebook": cb_what,
           "codebook_images": len(cb_paths), "seeds": seeds, "queries": runs[0]["queries"], **res, "per_scene": per_scene}
    cols = ["mAP", "R@1 (top-1)", *(f"mP@{k}" for k in ks)]
    vals = [res["map"], res["recall@1"], *(res[f"mp@{k}"] for k in ks)]
    lines = [f"{model} on {root}: {len(paths)} photos, {len(scenes)} scenes, {out['queries']} queries "
             f"(codebook: {cb_what}{f'; mean of {seeds} k-means seeds' if seeds > 1 else ''})",
             "  ".join(f"{c:>11s}" for c in cols), "  ".join(f"{v:11.1f}" for v in vals), "", "per scene (mAP):"]
    lines += [f"  {name:40s} {value:6.1f}" for name, value in sorted(per_scene.items(), key=lambda kv: kv[1])]
    out["table"] = "\n".join(lines)
    return out


def _extract_progress(model, paths: list[str], what: str) -> list:
    """:func:`extract_all` with a progress bar on stderr."""
    from tqdm import tqdm

    from lit._image import load_image

    return [model.extract(load_image(p, model.cfg.runtime.image_size))
            for p in tqdm(paths, desc=f"extract {what}", unit="img", leave=False)]
