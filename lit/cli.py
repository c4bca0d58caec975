"""The ``lit`` command line.

Every command prints one clear line on stderr and exits with status 2 on a user error
(bad file, bad option); set ``LIT_DEBUG=1`` to see the traceback instead. ``lit extract``
exits with 0 when every image is in the feature file, 3 when it finished but some files
could not be extracted (each named on stderr and recorded in the file) and 4 when none
could.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from collections.abc import Callable, Sequence

DEFAULT_MODEL = "lit-effl0"


class UserError(Exception):
    """An error caused by the user's input: printed as one line, no traceback."""


# ---------------------------------------------------------------------- helpers
def resolve_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available on this machine")
    if name != "cpu" and not name.startswith("cuda"):
        raise UserError(f"--device must be auto, cpu or cuda[:N], got {name!r}")
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
    from .asmk import ASMK
    from .distributed import env_from_environ, rank_device
    from .shards import open_features as FeatureStore  # a feature file or a set of shards

    device = rank_device(resolve_device(args.device))
    if args.shards > 1 or env_from_environ() is not None:  # a sharded index (lit.distributed)
        return _index_sharded(args, device)
    with FeatureStore(args.features) as store:
        desc, ids = store.all_descriptors()
        names = store.names
    if len(names) == 0:
        raise UserError(f"{args.features}: no images in this feature file")
    if args.codebook:
        codebook = _load_codebook(args.codebook)
    else:
        train = desc
        if args.train_features:
            with FeatureStore(args.train_features) as ts:
                train = ts.all_descriptors()[0]
        size = min(args.codebook_size, len(train))
        print(f"training a codebook of {size} words on {len(train)} descriptors", file=sys.stderr)
        codebook = ASMK.train(train, size=size, seed=args.seed, device=device).codebook
    index = ASMK(codebook, binary=not args.real, use_idf=args.idf, device=device)
    index.add(desc, ids)
    index.save(args.out)
    with open(args.out + ".names.json", "w") as f:
        json.dump({"features": os.path.abspath(args.features), "names": names}, f)
    print(f"indexed {len(names)} images ({len(desc)} descriptors) into {args.out}: {json.dumps(index.stats())}")
    from .text.store import write_index_embeddings

    if os.path.isfile(args.features):  # a shard set has no single file to copy embeddings from
        print(write_index_embeddings(args.features, args.out), file=sys.stderr)
    return 0


def _index_sharded(args, device: str) -> int:
    from .distributed import build_index, is_main_process

    codebook = _load_codebook(args.codebook) if args.codebook else None
    res = build_index(args.features, args.out, parts=args.shards, codebook=codebook, codebook_size=args.codebook_size,
                      train_features=args.train_features, seed=args.seed, device=device, binary=not args.real,
                      use_idf=args.idf, log=lambda m: print(m, file=sys.stderr))
    if is_main_process():
        with open(args.out + ".names.json", "w") as f:
            json.dump({"features": os.path.abspath(args.features), "names": res["names"]}, f)
        print(f"indexed {len(res['names'])} images ({res['descriptors']} descriptors) into {res['stats']['parts']} parts "
              f"{args.out} (.RRRRR-of-NNNNN.h5): {json.dumps(res['stats'])}")
    return 0


def _load_codebook(path: str):
    import numpy as np

    if path.endswith(".npy"):
        return np.load(path, allow_pickle=False)
    from .asmk import ASMK

    return ASMK.load(path).codebook


def _index_names(index_path: str) -> list[str]:
    side = index_path + ".names.json"
    if not os.path.isfile(side):
        raise UserError(f"{side}: missing (it is written by `lit index` next to the index)")
    with open(side) as f:
        return json.load(f)["names"]


def cmd_search(args) -> int:
    import numpy as np
    import torch

    from .distributed import is_main_process, open_index, rank_device
    from .shards import open_features as FeatureStore  # a feature file or a set of shards

    device = rank_device(resolve_device(args.device))
    if args.text or args.text_file:
        if args.queries or args.list or args.query_features:
            raise UserError("give either text queries (--text/--text-file) or query images, not both")
        from .text.search import cli_text_search

        results, notes = cli_text_search(args.index, args.text or [], args.text_file, args.text_model, args.topk, device)
        for note in notes:
            print(f"note: {note}", file=sys.stderr)
        return _write_search_results(args, results, text=True)
    index = open_index(args.index, device=device)  # one file, or the parts of a sharded index
    db_names = _index_names(args.index)
    if args.query_features:
        with FeatureStore(args.query_features) as qs:
            qnames = qs.names
            qfeats = [qs[i] for i in range(len(qs))]
    else:
        paths, _ = _gather_images(args.queries, args.list)
        model = load_cli_model(args.model, device)
        qnames, qfeats = [], []
        from ._image import ImageReadError, load_image

        for p in paths:
            try:
                img = load_image(p, _image_size(args, model))
            except ImageReadError as err:
                print(f"skipped: {err}", file=sys.stderr)
                continue
            qnames.append(p)
            qfeats.append(model.extract(img, scales=_scales(args.scales), features_num=args.features_num))
    if not qfeats:
        raise UserError("no readable query images")
    qdesc = torch.cat([f.descriptors for f in qfeats]).numpy()
    qids = np.concatenate([np.full(len(f), i) for i, f in enumerate(qfeats)])
    ranks, scores = index.search(qdesc, qids, topk=args.topk)
    if not is_main_process():  # torchrun: rank 0 writes the merged results
        return 0
    ranks, scores = np.asarray(ranks), np.asarray(scores)
    results = []
    for qi, qname in enumerate(qnames):
        hits = [{"rank": r + 1, "name": db_names[int(ranks[qi, r])], "score": float(scores[qi, r])} for r in range(ranks.shape[1])]
        results.append({"query": qname, "results": hits})
    return _write_search_results(args, results)


def _write_search_results(args, results: list[dict], text: bool = False) -> int:
    """Write ``[{"query", "results": [{"rank", "name", "score"}]}]`` as --json/--csv/--pairs/--plot and print."""
    qnames = [r["query"] for r in results]
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["query", "rank", "name", "score"])
            for res in results:
                for h in res["results"]:
                    w.writerow([res["query"], h["rank"], h["name"], f"{h['score']:.6f}"])
    if args.pairs:
        with open(args.pairs, "w") as f:
            for res in results:
                for h in res["results"]:
                    f.write(f"{res['query']} {h['name']}\n")
    if args.plot:
        from . import viz

        root = args.db_root or ""
        query, title = qnames[0], "query"
        if text:  # a text query: a blank panel titled with the text
            query, title = __import__("torch").ones(3, 64, 64), qnames[0][:40]
        fig = viz.plot_retrieval(query, [os.path.join(root, h["name"]) for h in results[0]["results"]][: args.plot_topk],
                                 scores=[h["score"] for h in results[0]["results"]][: args.plot_topk], query_title=title)
        viz.save_figure(fig, args.plot)
    if not (args.json or args.csv or args.pairs) or args.verbose:
        for res in results:
            print(res["query"])
            for h in res["results"][: min(10, len(res["results"]))]:
                print(f"  {h['rank']:3d}  {h['score']:8.4f}  {h['name']}")
    return 0


def cmd_match(args) -> int:
    import lit

    from . import viz

    model = load_cli_model(args.model, resolve_device(args.device))
    size = _image_size(args, model)
    img_a, img_b = lit.load_image(args.image_a, size), lit.load_image(args.image_b, size)
    fa = model.extract(img_a, scales=_scales(args.scales), features_num=args.features_num)
    fb = model.extract(img_b, scales=_scales(args.scales), features_num=args.features_num)
    m = lit.match(fa, fb, threshold=args.threshold, ratio=args.ratio)
    print(f"{len(m)} match{'' if len(m) == 1 else 'es'} (threshold {args.threshold}{', ratio ' + str(args.ratio) if args.ratio else ''}), score {m.score:.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"matches": len(m), "score": m.score, "indices_a": m.indices_a.tolist(), "indices_b": m.indices_b.tolist(),
                       "similarity": m.similarity.tolist(), "positions_a": fa.positions[m.indices_a].tolist(),
                       "positions_b": fb.positions[m.indices_b].tolist()}, f)
    if args.plot:
        fig = viz.plot_matches(img_a, img_b, fa.positions[m.indices_a], fb.positions[m.indices_b], m.similarity,
                               threshold=args.threshold, title=f"{os.path.basename(args.image_a)} - {os.path.basename(args.image_b)}")
        viz.save_figure(fig, args.plot)
        print(f"wrote {args.plot}")
    return 0


def cmd_plot_attention(args) -> int:
    import lit

    from . import viz

    model = load_cli_model(args.model, resolve_device(args.device))
    img = lit.load_image(args.image, _image_size(args, model))
    sf = model.superfeatures(img, scale=args.scale)
    indices = [int(i) for i in args.indices.split(",")] if args.indices else None
    fig = viz.plot_attention(img, sf, indices=indices, top=args.top)
    out = args.out or os.path.splitext(os.path.basename(args.image))[0] + "_attention.png"
    viz.save_figure(fig, out)
    print(f"wrote {out}")
    return 0


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

    p = sub.add_parser("index", help="train a codebook and build an ASMK index from a feature file")
    p.add_argument("features", help="HDF5 feature file of the database (from `lit extract`)")
    p.add_argument("--out", required=True, help="output index file (HDF5)")
    p.add_argument("--codebook", help="use this codebook (.npy K x d, or an index file) instead of training one")
    p.add_argument("--codebook-size", type=int, default=65536, help="k-means words (default 65536, capped by the descriptor count)")
    p.add_argument("--train-features", help="train the codebook on this feature file instead of the database")
    p.add_argument("--real", action="store_true", help="real-valued aggregated vectors instead of binary")
    p.add_argument("--idf", action="store_true", help="weight words by idf (off in FIRe)")
    p.add_argument("--seed", type=int, default=0, help="k-means seed")
    p.add_argument("--shards", type=int, default=1, help="build a sharded index of this many parts, OUT.RRRRR-of-NNNNN.h5 (under torchrun: one part per rank)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("search", help="search an ASMK index with query images")
    p.add_argument("index", help="index file from `lit index`")
    p.add_argument("queries", nargs="*", help="query images or folders")
    p.add_argument("--list", help="text file with one query path per line")
    p.add_argument("--query-features", help="use this feature file for the queries instead of extracting")
    p.add_argument("--text", action="append", help="a text query, e.g. 'a church at night' (repeatable)")
    p.add_argument("--text-file", help="text file with one text query per line")
    p.add_argument("--text-model", default=None, help="text model for --text (default: lit-text-effl0; "
                   "open_clip:ARCH:TAG when open_clip_torch is installed)")
    p.add_argument("--topk", type=int, default=10, help="results per query (default 10)")
    p.add_argument("--json", help="write results as JSON")
    p.add_argument("--csv", help="write results as CSV (query, rank, name, score)")
    p.add_argument("--pairs", help="write 'query db' name pairs, one per line (hloc/kapture format)")
    p.add_argument("--plot", help="write a figure of the first query's results (PNG/PDF)")
    p.add_argument("--plot-topk", type=int, default=8, help="results in the figure (default 8)")
    p.add_argument("--db-root", help="folder the database image names are relative to (for --plot)")
    p.add_argument("--verbose", action="store_true", help="also print the results when writing files")
    _add_model_args(p)
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("match", help="match the super-features of two images")
    p.add_argument("image_a")
    p.add_argument("image_b")
    p.add_argument("--threshold", type=float, default=0.9, help="minimum cosine similarity (default 0.9)")
    p.add_argument("--ratio", type=float, default=None, help="also apply a ratio test d1/d2 <= RATIO")
    p.add_argument("--plot", help="write a figure of the matches (PNG/PDF)")
    p.add_argument("--json", help="write the matches as JSON")
    _add_model_args(p)
    p.set_defaults(func=cmd_match)

    p = sub.add_parser("plot-attention", help="plot the attention maps of an image's strongest super-features")
    p.add_argument("image")
    p.add_argument("--out", help="output figure (default IMAGE_attention.png)")
    p.add_argument("--scale", type=float, default=1.0, help="extraction scale (default 1)")
    p.add_argument("--top", type=int, default=16, help="how many of the strongest super-features (default 16)")
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
