"""The collection pipeline as library stages, each making one policy choice users rely on.

Like hloc's stage modules, each function reads and writes files in documented formats; the
command line, the demo, the search service and the benchmarks call these functions, so that
every policy exists once:

- :mod:`~lit.pipeline.extract`: which images, how they are named (relative to a root, with
  ``/``), the model fingerprint, resumable extraction into a feature file
  (:func:`extract_to_file`), this rank's share under ``torchrun``;
- :mod:`~lit.pipeline.codebook`: how many visual words (:func:`codebook_size`), how many
  k-means runs, where a given codebook comes from;
- :mod:`~lit.pipeline.index`: building an index, single or sharded (:func:`build_index`,
  :func:`make_index`), one way to fill it (:func:`index_collection`);
- :mod:`~lit.pipeline.search`: queries and their names, the fingerprint check, search with
  or without the query itself;
- :mod:`~lit.pipeline.live`: photos added to and removed from an index in place, exactly
  as a rebuild with the same codebook would rank them (:class:`~lit.pipeline.live.LiveIndex`,
  ``lit add``, ``lit remove``);
- :mod:`~lit.pipeline.results`: JSON, CSV and pairs files;
- :mod:`~lit.pipeline.merge`: several feature files as one;
- :mod:`~lit.pipeline.match`: images matched under the model's own rule (two, or the pairs
  of a pairs file, written as JSON or hloc's HDF5 matches layout);
- :mod:`~lit.pipeline.rerank`: the second stage of a search: geometric verification of the
  top of the ASMK list (its core in :mod:`~lit.pipeline.verify`) and query expansion.

File formats have their own owners: :mod:`lit.features` (feature files) and
:mod:`lit.index_file` (index files).
"""

from ..errors import FingerprintError, PipelineError
from ..index_file import IndexInfo
from ..matching import MatchRule
from .codebook import (
    CODEBOOK_WORDS_PER_SQRT,
    MAX_CODEBOOK_SIZE,
    SMALL_CODEBOOK_DESCRIPTORS,
    SMALL_SET_RESTARTS,
    codebook_size,
    kmeans_restarts,
    load_codebook,
    quantisation_error,
    small_set_warning,
    train_codebook,
)
from .extract import (
    ExtractionSummary,
    FoundImages,
    check_extraction_options,
    common_root,
    extract_to_file,
    find_images,
    gather_images,
    image_names,
    model_fingerprint,
    rank_share,
    read_list_file,
)
from .index import (
    CodebookChoice,
    IndexSummary,
    build_index,
    choose_codebook,
    index_collection,
    make_index,
)
from .match import (
    PairMatches,
    match_images,
    match_pairs,
    pair_key,
    write_matches_h5,
    write_matches_json,
)
from .merge import MergeSummary, merge_feature_files
from .rerank import (
    DEFAULT_RERANK,
    PairCheck,
    Reranker,
    RerankSettings,
    expand_query,
    reranker_for,
    search_reranker,
    verify_matches,
)
from .results import (
    json_name,
    plot_paths,
    read_pairs,
    results_to_dict,
    scene_of,
    write_csv,
    write_json,
    write_pairs,
)
from .search import (
    Hit,
    Queries,
    QueryResult,
    RankPartIndex,
    check_fingerprint,
    open_index,
    queries_from_features,
    queries_from_images,
    search,
)

__all__ = [
    "CODEBOOK_WORDS_PER_SQRT", "DEFAULT_RERANK", "MAX_CODEBOOK_SIZE", "SMALL_CODEBOOK_DESCRIPTORS",
    "SMALL_SET_RESTARTS", "CodebookChoice", "ExtractionSummary", "FingerprintError", "FoundImages", "Hit",
    "IndexInfo", "IndexSummary", "MatchRule", "MergeSummary", "PairCheck", "PairMatches", "PipelineError",
    "Queries", "QueryResult", "RankPartIndex", "RerankSettings", "Reranker", "build_index",
    "check_extraction_options", "check_fingerprint", "choose_codebook", "codebook_size", "common_root",
    "expand_query", "extract_to_file", "find_images", "gather_images", "image_names", "index_collection",
    "json_name", "kmeans_restarts", "load_codebook", "make_index", "match_images", "match_pairs",
    "merge_feature_files", "model_fingerprint", "open_index", "pair_key", "plot_paths", "quantisation_error",
    "queries_from_features", "queries_from_images", "rank_share", "read_list_file", "read_pairs", "reranker_for",
    "results_to_dict", "scene_of", "search", "search_reranker", "small_set_warning", "train_codebook",
    "verify_matches", "write_csv", "write_json", "write_matches_h5", "write_matches_json", "write_pairs",
]
