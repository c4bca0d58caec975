"""The ``lit`` command line.

Every command prints one clear line on stderr and exits with status 2 on a user error
(bad file, bad option); set ``LIT_DEBUG=1`` to see the traceback instead. ``lit extract``
exits with 0 when every image is in the feature file, 3 when it finished but some files
could not be extracted (each named on stderr and recorded in the file) and 4 when none
could.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence

DEFAULT_MODEL = "lit-effl0"

INDEX_HELP = """Train a k-means codebook and build an ASMK index (binary, alpha 3, FIRe's options).

Codebook size: 12 x sqrt(number of training descriptors) words, at most 65536 (FIRe's size,
reached at about 30M descriptors; FIRe's 20k SfM-120k images x 1000 give 54k) and at most half the
descriptors; chosen on real held-out photos (benchmarks/pipeline_defaults.py). With fewer than
100,000 descriptors a warning says that the codebook is noisy, and k-means runs 4 times (the
codebook of least quantisation error is kept); --train-features learns it on another feature
file of the same model (e.g. a larger set of similar photos).

The index file is self-contained: image names, image root, codebook, parameters and the
fingerprint of the model and extraction settings are stored in it."""

SEARCH_HELP = """Rank the indexed images for each query.

score: the ASMK similarity (SPEC section 3): over the visual words query and database image
share, the sum of the selective kernel max(0, 1 - 2 hamming/128)^3, divided by the square root
of the number of words of each image. Higher is more similar; only the order within one
query matters. It is 1 for an image against itself with one word per descriptor, but queries
count each descriptor in its 5 nearest words (multiple assignment), so even the image itself
scores well below 1 (0.026 for a held-out photo with the default codebook).

Names: database names are relative to the index's image root, query names to the query
root; JSON records both roots. Queries must come from the model and extraction settings of
the index (fingerprint check; --force overrides)."""

MATCH_HELP = """Match the super-features of two images: reciprocal nearest neighbours by cosine
similarity that pass the model's match rule (default: the model's own, calibrated on its
training photos; --threshold / --margin replace its parts):
  fire: cosine >= 0.9 (FIRe's).
  lit-effl0: the background test: a pair is kept when its cosine beats by at least 0.1 the
    best cosine of either super-feature to 7424 super-features of unrelated photos shipped
    with the model (weights/lit-effl0.background.npz); no cosine floor. On its 10 held-out
    scenes it matches 6 of 10 same-scene pairs and 6.7 % of different-scene pairs
    (weights/README.md).
score: the sum of the cosine similarities of the matches (0 when there is none), so about
the number of matches times their mean similarity; more matches mean more evidence that the
photos show the same place."""


class UserError(Exception):
    """An error caused by the user's input: printed as one line, no traceback."""


# ---------------------------------------------------------------------- helpers
def resolve_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name != "cpu" and name != "cuda" and not (name.startswith("cuda:") and name[5:].isdigit()):
        raise UserError(f"--device must be auto, cpu or cuda[:N], got {name!r}")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available on this machine")
    if name.startswith("cuda:") and int(name[5:]) >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise UserError(f"--device {name}: this machine has {count} CUDA device{'' if count == 1 else 's'} (cuda:0..cuda:{count - 1})")
    return name


def load_cli_model(name: str | None, device: str):
    """Load ``--model`` (a path or registered name); the default is the shipped model."""
    import lit

    name = name or DEFAULT_MODEL
    if name == DEFAULT_MODEL and DEFAULT_MODEL not in lit.list_models():
        raise UserError(f"the default model {DEFAULT_MODEL!r} is not installed here; pass --model PATH|NAME ({', '.join(lit.list_models())})")
    return lit.load_model(name, device=device)


def _scales(text: str | None):
    if text is None:
        return None
    try:
        return tuple(float(s) for s in text.split(","))
    except ValueError:
        raise UserError(f"--scales must be comma-separated numbers, got {text!r}") from None


def _gather_images(inputs: Sequence[str], list_file: str | None) -> tuple[list[str], str | None]:
    """Paths from folders, files and a list file; returns (paths, root of the names).

    The root is :func:`lit.features.common_root` of the folder and file arguments (and of
    the listed files): one folder gives that folder.
    """
    from ._image import display_name, list_images
    from .features import common_root

    paths: list[str] = []
    anchors: list[str] = []
    for item in inputs:
        if os.path.isdir(item):
            paths.extend(list_images(item))
            anchors.append(item)
        elif os.path.exists(item):
            paths.append(item)
            anchors.append(item)
        else:
            raise UserError(f"{display_name(item)}: no such file or directory")
    if list_file:
        if not os.path.isfile(list_file):
            raise UserError(f"{list_file}: no such list file")
        base = os.path.dirname(list_file)
        with open(list_file, encoding="utf-8", errors="surrogateescape") as f:  # names need not be UTF-8
            for line in f:
                line = line.strip()
                if line and not line.startswith("#"):
                    paths.append(line if os.path.isabs(line) else os.path.join(base, line))
                    anchors.append(paths[-1])
    if not paths:
        raise UserError("no images given (folders are searched for .jpg/.png/... files)")
    return paths, common_root(anchors)


def _add_model_args(p: argparse.ArgumentParser, extraction: bool = True) -> None:
    p.add_argument("--model", default=None, help=f"checkpoint path or registered name (default: {DEFAULT_MODEL}; `lit models` lists names)")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, or cuda[:N] (default: auto)")
    if extraction:
        p.add_argument("--scales", default=None, help="comma-separated scales (default: the model's, FIRe: 2,1.414,1,0.707,0.5,0.353,0.25)")
        p.add_argument("--features-num", type=int, default=None, help="super-features kept per image (default: the model's, FIRe: 1000)")
        p.add_argument("--image-size", type=int, default=None, help="longer image side after downscaling (default: the model's, FIRe: 1024)")


def _image_size(args, model):
    return model.cfg.runtime.image_size if getattr(args, "image_size", None) is None else args.image_size


# ---------------------------------------------------------------------- commands
def _model_location(cfg) -> str:
    """Where a registered model's file is on this machine, or how to get it."""
    from pathlib import Path

    from ._download import cache_dir
    from .hub import WEIGHTS_DIR

    if cfg.local is not None and (WEIGHTS_DIR / cfg.local).is_file():
        return f"installed ({WEIGHTS_DIR / cfg.local})"
    cached = Path(cache_dir()) / cfg.filename
    if cached.is_file():
        return f"downloaded ({cached})"
    return f"not here: `lit download {cfg.name}`" if cfg.url else "missing (ships with the repository)"


def cmd_models(args) -> int:
    from ._download import cache_dir
    from .hub import REGISTRY

    for name in sorted(REGISTRY):
        cfg = REGISTRY[name]
        mark = "*" if name == DEFAULT_MODEL else " "
        print(f"{mark} {name:14s} {_model_location(cfg)}")
        print(f"    {cfg.description} [{cfg.license}]")
    print(f"* the default model (--model); files are cached in {cache_dir()}")
    return 0


def cmd_extract(args) -> int:
    from ._image import display_name
    from .distributed import rank_device, sharded_extraction
    from .features import extract_to_file

    paths, root = _gather_images(args.inputs, args.list)
    if args.max_pixels is not None and args.max_pixels < 0:
        raise UserError(f"--max-pixels must be >= 0 (0: no limit), got {args.max_pixels}")
    paths, out, report = sharded_extraction(paths, args.out)  # torchrun: this rank's block and shard
    model = load_cli_model(args.model, rank_device(resolve_device(args.device)))
    from .text.search import default_image_embedder

    embedder, note = default_image_embedder(args.text_model, model.device)
    if note:
        print(note, file=sys.stderr)
    summary = extract_to_file(
        model, paths, out, root=args.root, default_root=root, scales=_scales(args.scales),
        features_num=args.features_num, image_size=_image_size(args, model),
        num_workers=args.workers, progress=not args.quiet, half=args.half, batch_size=args.batch_size,
        amp=__import__("torch").bfloat16 if args.amp else None, retry_failed=not args.no_retry,
        max_pixels=(args.max_pixels or None) if args.max_pixels is not None else _default_max_pixels(),
        embedder=embedder,
    )
    print(report(summary).splitlines()[0])
    bad = len(summary.failed or {}) + summary.skipped_failed
    if bad:
        print(f"lit extract: {bad} of {summary.total} images could not be extracted (named above, recorded in "
              f"{display_name(out)}; `lit features info` lists them; a rerun retries them unless --no-retry)",
              file=sys.stderr)
    # under torchrun a rank that exits non-zero makes torchrun stop the other ranks: a rank
    # whose bad images are named and recorded exits 0
    return summary.status if out == args.out else 0


def _default_max_pixels() -> int:
    from ._image import DEFAULT_MAX_PIXELS

    return DEFAULT_MAX_PIXELS


def cmd_features(args) -> int:
    from ._image import display_name
    from .features import feature_file_info, merge_feature_files

    if args.action == "info":
        infos = [feature_file_info(p) for p in args.files]
        if args.json:
            print(json.dumps(infos if len(infos) > 1 else infos[0], indent=1))
            return 0
        for info in infos:
            st = info["settings"]
            print(info["path"])
            print(f"  {info['images']} images, {info['features']} features "
                  f"({info['features_per_image']['min']}-{info['features_per_image']['max']} per image), "
                  f"{info['descriptor_dim']}-d {info['dtype']}, {info['size_bytes'] / 1e6:.1f} MB")
            print(f"  names relative to: {info['root'] or '(not recorded)'}")
            if st:
                print(f"  extraction: scales {','.join(f'{x:g}' for x in st['scales'])}, "
                      f"{st['features_num']} features, image size {st['image_size']}")
            print(f"  model fingerprint: {info['fingerprint'][:16]}")
            print(f"  failed: {len(info['failed'])}")
            for err in list(info["failed"].values())[: args.show_failed]:
                print(f"    {err}")
            if len(info["failed"]) > args.show_failed:
                print(f"    ... (+{len(info['failed']) - args.show_failed} more; --json lists all)")
        return 0
    if not args.out:
        raise UserError("merge needs --out FILE")
    summary = merge_feature_files(args.files, args.out, overwrite=args.overwrite)
    print(f"merged {len(args.files)} files into {display_name(args.out)}: {summary.images} images, "
          f"{len(summary.duplicates)} duplicates stored once, {summary.failed} failures kept"
          + (f", names relative to {summary.root}" if summary.root else ""))
    return 0


def cmd_index(args) -> int:
    from . import pipeline
    from .distributed import env_from_environ, rank_device

    device = rank_device(resolve_device(args.device))
    if args.shards > 1 or env_from_environ() is not None:  # a sharded index (lit.distributed)
        return _index_sharded(args, device)
    codebook = cb_fp = None
    if args.codebook:
        codebook, cb_fp = pipeline.load_codebook(args.codebook)
    index, info = pipeline.build_index(
        args.features, codebook=codebook, codebook_source=args.codebook, codebook_fingerprint=cb_fp,
        size=args.codebook_size, train_features=args.train_features, image_root=args.image_root, seed=args.seed,
        binary=not args.real, use_idf=args.idf, device=device, force=args.force,
    )
    pipeline.save_index(index, info, args.out)
    root = f", image root {info.image_root}" if info.image_root else " (image root unknown: give --db-root to `lit search --plot`)"
    print(f"indexed {len(info.names)} images ({info.descriptors} descriptors, {info.codebook_size} words) into {args.out}{root}")
    from .text.store import write_index_embeddings

    if os.path.isfile(args.features):  # a shard set has no single file to copy embeddings from
        print(write_index_embeddings(args.features, args.out), file=sys.stderr)
    return 0


def _index_sharded(args, device: str) -> int:
    from . import pipeline
    from .distributed import build_index, is_main_process

    codebook = pipeline.load_codebook(args.codebook)[0] if args.codebook else None
    res = build_index(args.features, args.out, parts=args.shards, codebook=codebook, codebook_size=args.codebook_size,
                      train_features=args.train_features, seed=args.seed, device=device, binary=not args.real,
                      use_idf=args.idf, log=lambda m: print(m, file=sys.stderr))
    if is_main_process():
        from .shards import open_features

        with open_features(args.features) as fc:
            root, fingerprint = pipeline._feature_root(fc), fc.fingerprint
        with open(args.out + ".names.json", "w") as f:  # the parts' names, image root and fingerprint
            json.dump({"features": os.path.abspath(args.features), "names": res["names"], "sharded": True,
                       "image_root": args.image_root and os.path.abspath(args.image_root) or root,
                       "fingerprint": fingerprint}, f)
        print(f"indexed {len(res['names'])} images ({res['descriptors']} descriptors) into {res['stats']['parts']} parts "
              f"{args.out} (.RRRRR-of-NNNNN.h5): {json.dumps(res['stats'])}")
    return 0


def cmd_search(args) -> int:
    from . import pipeline
    from .distributed import is_main_process, open_index, rank_device

    device = rank_device(resolve_device(args.device))
    if args.text or args.text_file:
        if args.queries or args.list or args.query_features:
            raise UserError("give either text queries (--text/--text-file) or query images, not both")
        from .text.search import cli_text_search

        found, notes = cli_text_search(args.index, args.text or [], args.text_file, args.text_model, args.topk, device)
        for note in notes:
            print(f"note: {note}", file=sys.stderr)
        results = [pipeline.QueryResult(r["query"], tuple(pipeline.Hit(h["rank"], h["name"], h["score"]) for h in r["results"]))
                   for r in found]
        info = pipeline.read_index_info(args.index)
        return _write_search_results(args, results, info.image_root if info else None, None, text=True)
    if os.path.isfile(args.index):
        index, info = pipeline.load_index(args.index, device=device)
    else:  # the parts of a sharded index (under torchrun: this rank's part)
        index = open_index(args.index, device=device)
        info = pipeline.read_index_info(args.index)
        if info is None:
            raise UserError(f"{args.index}: neither an index file nor a sharded index with its .names.json")
    query_root = os.path.abspath(args.query_root) if args.query_root else None
    if args.query_features:
        from .shards import open_features

        if args.queries or args.list:
            raise UserError("give query images or --query-features, not both")
        with open_features(args.query_features) as qs:  # a feature file or a set of shards
            pipeline.check_fingerprint(info.fingerprint, qs.fingerprint, f"the query features {args.query_features}",
                                       args.index, args.force)
            qnames = list(qs.names)
            qfeats = [qs[i] for i in range(len(qs))]
            if query_root is None:
                query_root = pipeline._feature_root(qs)
                if query_root is None and os.path.realpath(args.query_features) == os.path.realpath(info.features or ""):
                    query_root = info.image_root  # the index's own feature file
    else:
        from ._image import ImageReadError, load_image
        from .features import model_fingerprint

        paths, root = _gather_images(args.queries, args.list)
        if args.query_root:
            root = args.query_root
        if query_root is None:  # names relative to the one folder given, else as typed (relative to cwd)
            query_root = os.path.abspath(root) if root is not None else os.getcwd()
        model = load_cli_model(args.model, device)
        scales = _scales(args.scales) or model.cfg.runtime.scales
        fnum = args.features_num or model.cfg.runtime.features_num
        size = _image_size(args, model)
        pipeline.check_fingerprint(info.fingerprint, model_fingerprint(model, scales, fnum, size),
                                   f"queries extracted with --model {args.model or DEFAULT_MODEL}", args.index, args.force)
        qnames, qfeats = [], []
        for p in paths:
            try:
                img = load_image(p, size)
            except ImageReadError as err:
                print(f"skipped: {err}", file=sys.stderr)
                continue
            qnames.append(os.path.relpath(os.path.abspath(p), query_root) if root is not None else os.path.normpath(p))
            qfeats.append(model.extract(img, scales=scales, features_num=fnum))
    if not qfeats:
        raise UserError("no readable query images")
    results = pipeline.search(index, info, qfeats, qnames, topk=args.topk, exclude_self=args.exclude_self,
                              query_root=query_root)
    if not is_main_process():  # torchrun: rank 0 writes the merged results
        return 0
    return _write_search_results(args, results, info.image_root, query_root)


def _write_search_results(args, results, db_root, query_root, text: bool = False) -> int:
    """Write results as --json/--csv/--pairs/--plot and print them."""
    from . import pipeline

    if args.json:
        pipeline.write_json(results, args.json, db_root, query_root)
    if args.csv:
        pipeline.write_csv(results, args.csv)
    if args.pairs:
        pipeline.write_pairs(results, args.pairs)
    if args.plot:
        _check_figure_path(args.plot)
        db_root = args.db_root or db_root
        if not db_root:
            raise UserError(f"{args.index}: the index does not know its image folder: give --db-root for --plot "
                            "(or rebuild it with `lit index --image-root`)")
        if text:  # a text query: a blank panel titled with the text
            from . import viz

            for res, path in zip(results, pipeline.plot_paths(args.plot, len(results)), strict=True):
                hits = res.hits[: args.plot_topk]
                fig = viz.plot_retrieval(__import__("torch").ones(3, 64, 64), [os.path.join(db_root, h.name) for h in hits],
                                         scores=[h.score for h in hits], query_title=res.query[:40],
                                         titles=[f"#{h.rank} {h.name}" for h in hits])
                print(f"wrote {viz.save_figure(fig, path)}", file=sys.stderr)
        else:
            for path in pipeline.plot_results(results, args.plot, db_root, query_root, topk=args.plot_topk):
                print(f"wrote {path}", file=sys.stderr)
    if not (args.json or args.csv or args.pairs) or args.verbose:
        for res in results:
            print(res.query)
            for h in res.hits:
                print(f"  {h.rank:4d}  {h.score:.4g}  {h.name}")
    return 0


def _check_figure_path(path: str) -> None:
    ext = os.path.splitext(path)[1].lower()
    if ext not in (".png", ".pdf", ".svg"):
        raise UserError(f"{path}: figures are written as .png, .pdf or .svg (got {ext or 'no extension'!r})")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise UserError(f"{path}: the folder {parent} does not exist")


def cmd_match(args) -> int:
    from . import pipeline, viz

    model = load_cli_model(args.model, resolve_device(args.device))
    if args.plot:
        _check_figure_path(args.plot)
    try:
        img_a, img_b, fa, fb, m, rule = pipeline.match_images(
            model, args.image_a, args.image_b, threshold="model" if args.threshold is None else _none_or_float(args.threshold, "--threshold"),
            margin="model" if args.margin is None else _none_or_float(args.margin, "--margin"), ratio=args.ratio,
            scales=_scales(args.scales), features_num=args.features_num, image_size=args.image_size)
    except ValueError as err:
        if "match background" not in str(err):
            raise
        raise UserError(f"--margin: {err}") from None
    thr = rule.threshold
    source = " (the model's rule)" if args.threshold is None and args.margin is None else ""
    print(f"{len(m)} match{'' if len(m) == 1 else 'es'} ({rule.describe()}{source}{', ratio ' + str(args.ratio) if args.ratio else ''}), "
          f"score {m.score:.4g} (sum of the matches' cosine similarities)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"matches": len(m), "rule": rule.describe(), "threshold": thr, "margin": rule.margin, "score": m.score, "indices_a": m.indices_a.tolist(),
                       "indices_b": m.indices_b.tolist(), "similarity": m.similarity.tolist(),
                       "positions_a": fa.positions[m.indices_a].tolist(), "positions_b": fb.positions[m.indices_b].tolist()}, f)
    if args.plot:
        fig = viz.plot_matches(img_a, img_b, fa.positions[m.indices_a], fb.positions[m.indices_b], m.similarity,
                               threshold=thr, title=f"{os.path.basename(args.image_a)} - {os.path.basename(args.image_b)}")
        viz.save_figure(fig, args.plot)
        print(f"wrote {args.plot}")
    return 0


def _none_or_float(value: str, option: str) -> float | None:
    if value.lower() == "none":
        return None
    try:
        return float(value)
    except ValueError:
        raise UserError(f"{option} must be a number or none, got {value!r}") from None


def cmd_plot_attention(args) -> int:
    import lit

    from . import viz

    if args.scales is not None or args.features_num is not None:
        raise UserError("plot-attention shows the super-features of one scale: use --scale S "
                        "(--scales and --features-num do not apply)")
    if args.out:
        _check_figure_path(args.out)
    model = load_cli_model(args.model, resolve_device(args.device))
    img = lit.load_image(args.image, _image_size(args, model))
    sf = model.superfeatures(img, scale=args.scale)
    n = sf.attention.shape[0]
    if args.indices:
        try:
            indices = [int(i) for i in args.indices.split(",")]
        except ValueError:
            raise UserError(f"--indices must be comma-separated integers, got {args.indices!r}") from None
        bad = [i for i in indices if not 0 <= i < n]
        if bad:
            raise UserError(f"--indices {bad}: this model has super-features 0..{n - 1}")
    else:
        indices = None
        if not 1 <= args.top <= n:
            raise UserError(f"--top {args.top}: this model has {n} super-features per scale, choose 1..{n}")
    model_name = args.model or DEFAULT_MODEL
    title = f"{os.path.basename(args.image)}, {model_name}, scale {args.scale:g}: " + (
        "chosen super-features" if indices else f"{args.top} strongest of {n} super-features")
    fig = viz.plot_attention(img, sf, indices=indices, top=args.top, title=title, normalize="each")
    out = args.out or _attention_default_out(args.image)
    viz.save_figure(fig, out)
    print(f"wrote {out}")
    return 0


def _attention_default_out(image: str) -> str:
    """``<folder>_<image stem>_attention.png`` in the current folder (not beside the image: a
    figure in the photo folder would be extracted with the photos next time); two ``01.jpg``
    of different folders get different names, and nothing is overwritten (``_2``, ``_3``...)."""
    path = os.path.abspath(image)
    folder = os.path.basename(os.path.dirname(path))
    stem = os.path.splitext(os.path.basename(path))[0]
    base = f"{folder}_{stem}" if folder else stem
    out, i = f"{base}_attention.png", 2
    while os.path.exists(out):
        out, i = f"{base}_attention_{i}.png", i + 1
    return out


def cmd_download(args) -> int:
    from . import hub
    from ._download import cache_dir, cleanup_new_dirs

    if args.name in hub.REGISTRY:
        with cleanup_new_dirs(cache_dir()):  # no empty folders left behind by a failure
            path = hub.resolve(args.name, progress=not args.quiet)
        print(path)
        return 0
    from .data import DATASETS, download_dataset

    if args.name not in DATASETS:
        raise UserError(f"unknown name {args.name!r}: models {', '.join(hub.list_models())}; datasets {', '.join(sorted(DATASETS))}")
    if not args.root:
        raise UserError("--root DIR is needed to download a dataset")
    with cleanup_new_dirs(args.root):
        print(download_dataset(args.name, args.root, progress=not args.quiet))
    return 0


def cmd_evaluate(args) -> int:
    from .bench.revisited import main as revisited_main

    return revisited_main(args.rest)


def cmd_demo(args) -> int:
    from .demo import run_demo

    return run_demo(out_dir=args.out, device=resolve_device(args.device), work_dir=args.work_dir)


# ---------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="lit", description="Landmark image retrieval with super-features (FIRe / LIT).",
        epilog="`lit COMMAND --help` describes each command. User errors are one line on stderr with exit "
               "status 2 (LIT_DEBUG=1 shows the traceback).",
    )
    parser.add_argument("--version", action="version", version=f"lit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("models", help="list registered models: the default, and which are on this machine")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser(
        "extract", help="extract super-features of images into an HDF5 file (resumable)",
        description="Extract super-features of images into an HDF5 feature file. Reruns skip images already "
                    "in the file and retry the ones that failed. Exit status: 0 every image is in the file, "
                    "3 finished but some files could not be extracted (each named on stderr, recorded in "
                    "the file), 4 none could be, 2 bad options.",
    )
    p.add_argument("inputs", nargs="*", help="image files and/or folders (searched recursively)")
    p.add_argument("--list", help="text file with one image path per line (relative to the list's folder)")
    p.add_argument("--out", required=True, help="output HDF5 feature file; an existing one is resumed (its folder is created)")
    p.add_argument("--root", help="store image names relative to this folder (default: the folder given, or the "
                                   "deepest folder holding every input)")
    p.add_argument("--no-retry", action="store_true", help="do not retry images that failed in an earlier run")
    p.add_argument("--max-pixels", type=int, default=None,
                   help="refuse images that decode to more pixels ('too large'; default 180000000, 0: no limit; "
                        "large JPEGs are decoded reduced)")
    p.add_argument("--workers", type=int, default=0, help="image decoding processes (default 0: in the main process; "
                                                          "capped by the CPU count)")
    p.add_argument("--half", action="store_true", help="store descriptors as float16")
    p.add_argument("--batch-size", type=int, default=1, help="images per forward pass: consecutive images of equal size are batched (default 1)")
    p.add_argument("--amp", action="store_true", help="fast path: bf16 autocast (features differ slightly from float32)")
    p.add_argument("--text-model", default=None, help="also store the global image embeddings of this text model's image tower, "
                   "for `lit search --text` (default: lit-text-effl0; 'none': skip)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_model_args(p)
    p.set_defaults(func=cmd_extract)

    p = sub.add_parser("features", help="inspect feature files (info) or merge several into one (merge)")
    p.add_argument("action", choices=("info", "merge"), help="info: what a file holds; merge: several files into --out")
    p.add_argument("files", nargs="+", help="feature files (from `lit extract`)")
    p.add_argument("--out", help="merge: the new feature file")
    p.add_argument("--overwrite", action="store_true", help="merge: replace --out if it exists")
    p.add_argument("--json", action="store_true", help="info: print JSON (names of failed files included)")
    p.add_argument("--show-failed", type=int, default=20, help="info: failed files listed (default 20)")
    p.set_defaults(func=cmd_features)

    p = sub.add_parser("index", help="train a codebook and build an ASMK index from a feature file",
                       description=INDEX_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("features", help="HDF5 feature file of the database (from `lit extract`)")
    p.add_argument("--out", required=True, help="output index file (HDF5; holds the names, image root, codebook, "
                   "parameters and the model fingerprint)")
    p.add_argument("--codebook", help="use this codebook (.npy K x d, or an index file) instead of training one")
    p.add_argument("--codebook-size", type=int, default=None,
                   help="k-means words (default: 12 x sqrt(descriptors), at most 65536: see above)")
    p.add_argument("--train-features", help="learn the codebook on this feature file (same model) instead of the database")
    p.add_argument("--image-root", help="folder the database image names are relative to (stored for `lit search --plot`; "
                   "default: the one the feature file records)")
    p.add_argument("--real", action="store_true", help="real-valued aggregated vectors instead of binary")
    p.add_argument("--idf", action="store_true", help="weight words by idf (off in FIRe)")
    p.add_argument("--seed", type=int, default=0, help="k-means seed")
    p.add_argument("--force", action="store_true", help="go on when --train-features/--codebook come from another model")
    p.add_argument("--shards", type=int, default=1, help="build a sharded index of this many parts, OUT.RRRRR-of-NNNNN.h5 (under torchrun: one part per rank)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("search", help="search an ASMK index with query images or a query feature file",
                       description=SEARCH_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("index", help="index file from `lit index`")
    p.add_argument("queries", nargs="*", help="query images or folders")
    p.add_argument("--list", help="text file with one query path per line")
    p.add_argument("--query-features", help="use this feature file for the queries instead of extracting")
    p.add_argument("--query-root", help="folder the query names are relative to (default: the one query folder given, "
                   "or for --query-features the index's image root when it is the index's own feature file)")
    p.add_argument("--topk", type=int, default=10, help="results per query, printed and written (default 10)")
    p.add_argument("--exclude-self", action="store_true", help="leave the query itself out of its results")
    p.add_argument("--text", action="append", help="a text query, e.g. 'a church at night' (repeatable)")
    p.add_argument("--text-file", help="text file with one text query per line")
    p.add_argument("--text-model", default=None, help="text model for --text (default: lit-text-effl0; "
                   "open_clip:ARCH:TAG when open_clip_torch is installed)")
    p.add_argument("--json", help="write results as JSON")
    p.add_argument("--csv", help="write results as CSV (query, rank, name, score)")
    p.add_argument("--pairs", help="write 'query db' name pairs, one per line (hloc/kapture format)")
    p.add_argument("--plot", help="write one figure per query (.png/.pdf/.svg; several queries: NAME_001.png, ...)")
    p.add_argument("--plot-topk", type=int, default=8, help="results in each figure (default 8)")
    p.add_argument("--db-root", help="folder of the database images for --plot (default: the index's image root)")
    p.add_argument("--verbose", action="store_true", help="also print the results when writing files")
    p.add_argument("--force", action="store_true", help="search even when the queries come from another model than the index")
    _add_model_args(p)
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("match", help="match the super-features of two images", description=MATCH_HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("image_a")
    p.add_argument("image_b")
    p.add_argument("--threshold", default=None,
                   help="minimum cosine similarity, or none (default: the model's: 0.9 for fire, none for lit-effl0)")
    p.add_argument("--margin", default=None,
                   help="background test margin, or none to drop the test (default: the model's: 0.1 for lit-effl0; "
                        "fire has no background)")
    p.add_argument("--ratio", type=float, default=None, help="also apply a ratio test d1/d2 <= RATIO")
    p.add_argument("--plot", help="write a figure of the matches (.png/.pdf/.svg)")
    p.add_argument("--json", help="write the matches as JSON")
    _add_model_args(p)
    p.set_defaults(func=cmd_match)

    p = sub.add_parser("plot-attention", help="plot the attention maps of an image's strongest super-features")
    p.add_argument("image")
    p.add_argument("--out", help="output figure (default FOLDER_IMAGE_attention.png in the current folder, never overwritten)")
    p.add_argument("--scale", type=float, default=1.0, help="extraction scale (default 1)")
    p.add_argument("--top", type=int, default=16, help="how many of the strongest super-features (default 16; at most N)")
    p.add_argument("--indices", help="comma-separated super-feature indices instead of the strongest")
    _add_model_args(p)
    p.set_defaults(func=cmd_plot_attention)

    p = sub.add_parser("download", help="download a registered model or a dataset (with sha256 checks)")
    p.add_argument("name", help="model name (`lit models`) or dataset (roxford5k, rparis6k, revisitop1m, retrieval-sfm-120k)")
    p.add_argument("--root", help="dataset folder")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_download)

    p = sub.add_parser("evaluate", help="revisited Oxford/Paris benchmark (same options as benchmarks/revisited.py)", add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("demo", help="offline demo: extract, index, search and plot a small bundled photo set")
    p.add_argument("--out", default="figures", help="folder for the figures (default figures/)")
    p.add_argument("--work-dir", default=None, help="folder for features and index (default: a temporary folder)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.set_defaults(func=cmd_demo)

    for name, adder, runner in _plugin_commands():
        help_text = _PLUGIN_HELP.get(name) or (adder.__doc__.splitlines()[0] if adder.__doc__ else None)
        p = sub.add_parser(name, help=help_text, description=help_text)
        adder(p)
        p.set_defaults(func=runner)
    return parser


_PLUGIN_HELP = {
    "train": "train a super-feature model: the FIRe recipe on SfM-120k, or fine-tuning on your own photos",
}


def _plugin_commands() -> list[tuple[str, Callable, Callable]]:
    out = []
    try:
        from .train import add_train_arguments, run_train

        out.append(("train", add_train_arguments, run_train))
    except ImportError:
        pass
    from .text.cli import add_text_arguments, run_text

    out.append(("text", add_text_arguments, run_text))
    try:
        from .metric import (
            add_evaluate_global_arguments,
            add_train_global_arguments,
            run_evaluate_global,
            run_train_global,
        )

        out.append(("train-global", add_train_global_arguments, run_train_global))
        out.append(("evaluate-global", add_evaluate_global_arguments, run_evaluate_global))
    except ImportError:
        pass
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "evaluate":  # options belong to the benchmark's own parser
        args = argparse.Namespace(command="evaluate", rest=argv[1:], func=cmd_evaluate)
    else:
        args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("lit: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # user errors: one line, no traceback
        from ._download import DownloadError
        from ._image import ImageReadError
        from .features import FeatureFileError
        from .models.checkpoint import CheckpointError

        user = (UserError, ImageReadError, FeatureFileError, CheckpointError, DownloadError, FileNotFoundError,
                NotADirectoryError, PermissionError, ValueError, TypeError)
        if os.environ.get("LIT_DEBUG") or not isinstance(err, user):
            raise
        msg = str(err).strip().splitlines()
        print(f"lit {args.command}: error: {msg[0] if msg else type(err).__name__}", file=sys.stderr)
        for line in msg[1:6]:
            print(f"  {line.strip()}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
