"""``lit search``: rank the indexed images for query images, a query feature file or words."""

from __future__ import annotations

import os
import sys

from ._common import add_model_arguments, check_figure_path, device, load_model, parse_scales

NAME = "search"
HELP = "search an ASMK index with query images or a query feature file"
DESCRIPTION = """Rank the indexed images for each query.

score: the ASMK similarity (SPEC section 3): over the visual words query and database image
share, the sum of the selective kernel max(0, 1 - 2 hamming/128)^3, divided by the square root
of the number of words of each image. Higher is more similar; only the order within one
query matters. It is 1 for an image against itself with one word per descriptor, but queries
count each descriptor in its 5 nearest words (multiple assignment), so even the image itself
scores well below 1 (0.026 for a held-out photo with the default codebook).

Names: database names are relative to the index's image root, query names to the query
root; JSON records both roots. Queries must come from the model and extraction settings of
the index (fingerprint check; --force overrides)."""


def add_arguments(p) -> None:
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
    add_model_arguments(p)


def run(args) -> int:
    from .. import pipeline
    from ..distributed import is_main_process, open_index
    from ..errors import UsageError

    dev = device(args)
    if args.text or args.text_file:
        if args.queries or args.list or args.query_features:
            raise UsageError("give either text queries (--text/--text-file) or query images, not both")
        from ..text.search import cli_text_search

        found, notes = cli_text_search(args.index, args.text or [], args.text_file, args.text_model, args.topk, dev)
        for note in notes:
            print(f"note: {note}", file=sys.stderr)
        results = [pipeline.QueryResult(r["query"], tuple(pipeline.Hit(h["rank"], h["name"], h["score"]) for h in r["results"]))
                   for r in found]
        info = pipeline.read_index_info(args.index)
        return _write_results(args, results, info.image_root if info else None, None, text=True)
    if os.path.isfile(args.index):
        index, info = pipeline.load_index(args.index, device=dev)
    else:  # the parts of a sharded index (under torchrun: this rank's part)
        index = open_index(args.index, device=dev)
        info = pipeline.read_index_info(args.index)
        if info is None:
            raise UsageError(f"{args.index}: neither an index file nor a sharded index with its .names.json")
    query_root = os.path.abspath(args.query_root) if args.query_root else None
    if args.query_features:
        from ..shards import open_features

        if args.queries or args.list:
            raise UsageError("give query images or --query-features, not both")
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
        from .._image import ImageReadError, load_image
        from ..features import model_fingerprint

        paths, root = pipeline.gather_images(args.queries, args.list)
        if args.query_root:
            root = args.query_root
        if query_root is None:  # names relative to the one folder given, else as typed (relative to cwd)
            query_root = os.path.abspath(root) if root is not None else os.getcwd()
        model = load_model(args)
        scales = parse_scales(args.scales) or model.cfg.runtime.scales
        fnum = args.features_num or model.cfg.runtime.features_num
        size = model.cfg.runtime.image_size if args.image_size is None else args.image_size
        pipeline.check_fingerprint(info.fingerprint, model_fingerprint(model, scales, fnum, size),
                                   f"queries extracted with --model {args.model or 'lit-effl0'}", args.index, args.force)
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
        raise UsageError("no readable query images")
    results = pipeline.search(index, info, qfeats, qnames, topk=args.topk, exclude_self=args.exclude_self,
                              query_root=query_root)
    if not is_main_process():  # torchrun: rank 0 writes the merged results
        return 0
    return _write_results(args, results, info.image_root, query_root)


def _write_results(args, results, db_root, query_root, text: bool = False) -> int:
    """Write results as --json/--csv/--pairs/--plot and print them."""
    from .. import pipeline
    from ..errors import UsageError

    if args.json:
        pipeline.write_json(results, args.json, db_root, query_root)
    if args.csv:
        pipeline.write_csv(results, args.csv)
    if args.pairs:
        pipeline.write_pairs(results, args.pairs)
    if args.plot:
        check_figure_path(args.plot)
        db_root = args.db_root or db_root
        if not db_root:
            raise UsageError(f"{args.index}: the index does not know its image folder: give --db-root for --plot "
                             "(or rebuild it with `lit index --image-root`)")
        if text:  # a text query: a blank panel titled with the text
            import torch

            from .. import viz

            for res, path in zip(results, pipeline.plot_paths(args.plot, len(results)), strict=True):
                hits = res.hits[: args.plot_topk]
                fig = viz.plot_retrieval(torch.ones(3, 64, 64), [os.path.join(db_root, h.name) for h in hits],
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
