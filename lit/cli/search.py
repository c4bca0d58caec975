"""``lit search``: rank the indexed images for query images, a query feature file or words."""

from __future__ import annotations

import argparse
import os
import sys

from ._common import (
    DEFAULT_MODEL,
    add_model_arguments,
    check_figure_path,
    device,
    load_model,
    parse_scales,
)

NAME = "search"
HELP = "search an ASMK index with query images or a query feature file"
DESCRIPTION = """Rank the indexed images for each query.

score: the ASMK similarity (docs/method.md): over the visual words query and database image
share, the sum of the selective kernel max(0, 1 - 2 hamming/128)^3, divided by the square root
of the number of words of each image. Higher is more similar; only the order within one
query matters. It is 1 for an image against itself with one word per descriptor, but queries
count each descriptor in its 5 nearest words (multiple assignment), so even the image itself
scores well below 1 (0.026 for a held-out photo with the default codebook). Images that share
no visual word with the query (score 0) are not listed (--keep-unscored lists them).

Text queries (--text): score is the overlap of the query's and the photo's class
distributions (the ranking); calibrated is that score in standard deviations above the scores
of meaningless texts on the same photo, comparable across queries; a query whose best
calibrated score is under 3 gets a note that it has no confident result.

Names: database names are relative to the index's image root, query names to the query
root; JSON records both roots. Queries must come from the model and extraction settings of
the index (fingerprint check; --force overrides).

Re-ranking (--rerank N): the top N of each ASMK list are matched with the query (mutual
nearest super-features over all scales, cosine >= 0.5) and the attention centroids of the
matches must agree with one similarity transformation (seeded RANSAC); an image whose
inliers show at least 7 distinct query super-features (templates) is verified and scores
that support + its ASMK score ("support" in the results), so verified images come first,
the others keep their ASMK order below them, and ranks below N do not move. --expand K
then adds the verified super-features of the top K verified images to the query and
searches again.

Verification by local tokens (when `lit extract --tokens` wrote the token file beside the
database's feature file, or --db-tokens FILE): instead of the
super-features' attention centroids, the 2048 strongest cells of the backbone's feature map
(3 scales, 64 dimensions, 640-px images) are matched (the query's 1024 strongest, mutual
nearest neighbours, cosine >= 0.5) and their positions must agree with one similarity within 24 px;
8 inliers verify. Finer positions: on the multi-view scenes it lifts mAP where super-features
do not (README "Re-ranking"). No --expand with tokens."""


def add_arguments(p) -> None:
    p.add_argument("index", help="index file from `lit index`")
    p.add_argument("queries", nargs="*", help="query images or folders")
    p.add_argument("--list", help="text file with one query path per line")
    p.add_argument("--query-features", help="use this feature file for the queries instead of extracting")
    p.add_argument("--query-root", help="folder the query names are relative to (default: the one query folder given, "
                   "or for --query-features the index's image root when it is the index's own feature file)")
    p.add_argument("--topk", type=int, default=10, help="results per query, printed and written (default 10)")
    p.add_argument("--exclude-self", action="store_true", help="leave the query itself out of its results")
    p.add_argument("--rerank", type=_short_list, default=None, metavar="N",
                   help="re-rank the top N of each list by geometrically verified matches of local tokens (when "
                   "`lit extract --tokens` wrote them beside the index's feature file) or of super-features, with "
                   "the model of --model (the index's model); default: 100 where the tokens are, else 0 (ASMK "
                   "alone: super-feature verification does not help on held-out scenes, README Re-ranking)")
    p.add_argument("--expand", type=int, default=0, metavar="K",
                   help="query expansion: add the verified super-features of the top K verified images to the query "
                   "and search again (default 0)")
    p.add_argument("--db-features", help="the database feature file for --rerank (default: the one the index records)")
    p.add_argument("--db-tokens", help="the database's token file for --rerank (default: the one beside its feature "
                   "file, db.tokens.h5 for db.h5, when `lit extract --tokens` wrote it): local tokens are verified "
                   "instead of super-features, the query images' tokens extracted (README Re-ranking); 'none': "
                   "verify super-features")
    p.add_argument("--query-tokens", help="with --query-features: the queries' token file (default: the one beside it)")
    p.add_argument("--keep-unscored", action="store_true",
                   help="also list images with score 0 (no visual word in common with the query; by default a list "
                        "stops at the last positive score), in printed and written results")
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


def _short_list(text: str) -> int:
    """``--rerank``'s value: a count >= 0 (a file name there is refused, not read as N)."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expects the number of images to re-rank (e.g. --rerank 100), got {text!r}"
                                         ) from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"expects a number of images >= 0, got {n}")
    return n


def run(args) -> int:
    from .. import pipeline
    from ..distributed import is_main_process
    from ..errors import UsageError
    from ..index_file import read_info

    dev = device(args)
    if args.text or args.text_file:
        if args.queries or args.list or args.query_features:
            raise UsageError("give either text queries (--text/--text-file) or query images, not both")
        from ..text.search import cli_text_search

        found, notes = cli_text_search(args.index, args.text or [], args.text_file, args.text_model, args.topk, dev)
        for note in notes:
            print(f"note: {note}", file=sys.stderr)
        results = [pipeline.QueryResult(r["query"], tuple(pipeline.Hit(h["rank"], h["name"], h["score"], calibrated=h["calibrated"])
                                                          for h in r["results"])) for r in found]
        return _write_results(args, results, read_info(args.index).image_root, None, text=True)
    index, info = pipeline.open_index(args.index, device=dev)  # a file, a sharded index (torchrun: this rank's part)
    model = None
    if args.query_features:
        if args.queries or args.list:
            raise UsageError("give query images or --query-features, not both")
        queries = pipeline.queries_from_features(args.query_features, info, root=args.query_root, force=args.force,
                                                 against=args.index)
    else:
        model = load_model(args)
        queries = pipeline.queries_from_images(
            model, args.queries, info, list_file=args.list, root=args.query_root,
            scales=parse_scales(args.scales), features_num=args.features_num, image_size=args.image_size,
            force=args.force, model_name=f"--model {args.model or DEFAULT_MODEL}", against=args.index)
    reranker, rerank, db_tokens = None, 0, _db_tokens(args, info)
    if args.rerank is None:  # the default: verification by tokens where they were extracted, for every query
        from ..models import tokens_beside

        queries_have_tokens = not args.query_features or os.path.isfile(args.query_tokens
                                                                        or tokens_beside(args.query_features))
        args.rerank = None if db_tokens and queries_have_tokens else 0
    if args.rerank != 0 or args.expand:
        try:
            model = model or load_model(args)
            reranker, rerank = pipeline.search_reranker(info, model, args.rerank, args.expand,
                                                        features=args.db_features, device=dev, tokens=db_tokens)
        except UsageError as err:
            raise UsageError(f"{err} (--rerank/--expand)") from None
    elif args.db_tokens or args.query_tokens:
        raise UsageError("--db-tokens and --query-tokens verify the re-ranked short list: give --rerank N too")
    try:
        checked = _query_tokens(args, queries, model) if reranker is not None and db_tokens else None
        results = pipeline.search(index, info, queries.features, queries.names, topk=args.topk,
                                  exclude_self=args.exclude_self, query_root=queries.root, rerank=rerank,
                                  keep_unscored=args.keep_unscored,
                                  expand=args.expand if rerank else 0, reranker=reranker, verify_queries=checked)
    finally:
        if reranker is not None:
            reranker.close()
    if not is_main_process():  # torchrun: rank 0 writes the merged results
        return 0
    return _write_results(args, results, info.image_root, queries.root)


def _db_tokens(args, info) -> str | None:
    """The database token file --rerank verifies: --db-tokens, else the one beside the feature
    file when it exists, else none (super-features are verified)."""
    from ..models import tokens_beside

    if args.db_tokens:
        return None if args.db_tokens == "none" else args.db_tokens
    features = args.db_features or info.features
    beside = tokens_beside(features) if features else None
    return beside if beside and os.path.isfile(beside) else None


def _query_tokens(args, queries, model) -> list:
    """The tokens the reranker verifies of each query: from --query-tokens (or the token file
    beside --query-features), else extracted from the query images."""
    from .._image import display_name
    from ..errors import UsageError
    from ..features import open_features
    from ..models import token_extractor, tokens_beside

    if args.query_features:
        path = args.query_tokens or tokens_beside(args.query_features)
        if not os.path.isfile(path):
            raise UsageError(f"verification by tokens needs the queries' tokens: no {display_name(path)} "
                             "(`lit extract --tokens` of the query images, or --query-tokens; --db-tokens none "
                             "verifies super-features)")
        with open_features(path) as store:
            known = set(store.names)
            missing = [n for n in queries.names if n not in known]
            if missing:
                raise UsageError(f"{display_name(path)}: no tokens of {len(missing)} queries, e.g. "
                                 f"{display_name(missing[0])}")
            return [store[n] for n in queries.names]
    if args.query_tokens:
        raise UsageError("--query-tokens goes with --query-features; the tokens of query images are extracted")
    extractor = token_extractor(model)
    return [extractor.extract(os.path.join(queries.root, n) if queries.root else n) for n in queries.names]


def _write_results(args, results, db_root, query_root, text: bool = False) -> int:
    """Write results as --json/--csv/--pairs/--plot and print them."""
    from .. import pipeline
    from ..errors import UsageError

    if text and args.pairs:
        raise UsageError("--pairs lists image pairs (hloc): text queries do not belong in it; use --json or --csv")
    if args.json:
        pipeline.write_json(results, args.json, db_root, query_root)
    if args.csv:
        pipeline.write_csv(results, args.csv)
    if args.pairs:
        pipeline.write_pairs(results, args.pairs)
    n_hits = sum(len(r.hits) for r in results)
    for path in (args.json, args.csv, args.pairs):
        if path:
            print(f"wrote {path} ({len(results)} quer{'y' if len(results) == 1 else 'ies'}, {n_hits} results)",
                  file=sys.stderr)
    if args.plot:
        check_figure_path(args.plot)
        db_root = args.db_root or db_root
        if not db_root:
            raise UsageError(f"{args.index}: the index does not know its image folder: give --db-root for --plot "
                             "(or rebuild it with `lit index --image-root`)")
        from .. import viz

        if text:  # a text query: its words in the query panel
            for res, path in zip(results, pipeline.plot_paths(args.plot, len(results)), strict=True):
                hits = res.hits[: args.plot_topk]
                fig = viz.plot_retrieval(None, [os.path.join(db_root, h.name) for h in hits],
                                         scores=[h.score for h in hits], query_title="text query", query_text=res.query,
                                         titles=[f"#{h.rank} {h.name}" for h in hits])
                print(f"wrote {viz.save_figure(fig, path)}", file=sys.stderr)
        else:
            for path in viz.plot_search_results(results, args.plot, db_root, query_root, topk=args.plot_topk):
                print(f"wrote {path}", file=sys.stderr)
    if not (args.json or args.csv or args.pairs) or args.verbose:
        from .._names import display_name  # one line per result: names and typed text escaped

        for res in results:
            print(display_name(res.query))
            for h in res.hits:
                verified = f"  (support {h.support})" if h.support else ""
                calibrated = "" if h.calibrated is None else f"  (calibrated {h.calibrated:+.1f})"
                print(f"  {h.rank:4d}  {h.score:.4g}{calibrated}  {display_name(h.name)}{verified}")
    return 0
