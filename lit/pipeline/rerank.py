"""Re-ranking the top of an ASMK list by geometrically verified super-feature matches, and
query expansion: the second stage of a search (``lit search --rerank N --expand K``).

Policy (the defaults were chosen on the multi-view training scenes only; README
"Re-ranking" gives the table):

- tentative matches, as in classic spatial verification: the mutual nearest neighbours of
  the query's and each candidate's super-features over all scales, with a cosine of at
  least :data:`VERIFY_FLOOR` -- far looser than a model's match rule (lit-effl0's background
  test leaves too few matches between photos of the same place in other light or season to
  verify); the geometry then rejects the chance matches;
- the attention centroids of the matches must agree with one similarity transformation
  (:func:`lit.pipeline.verify.ransac`, seeded) within :data:`VERIFY_THRESHOLD` of the image
  size, and with the ratio of the super-features' image scales within a factor
  :data:`SCALE_TOLERANCE`;
- the *support* of a candidate is the number of distinct query super-feature templates
  among the inliers (a template found at several scales attends to one region: its matches
  are one piece of evidence, not several); a candidate with a support of at least
  :data:`MIN_SUPPORT` is *verified*; its score becomes ``support + ASMK score`` (the ASMK
  score is at most 1), so verified images come first, by support, and the others keep their
  ASMK order and score below them; ranks below ``N`` are untouched;
- expansion (``K > 0``): the inlier super-features of the top ``K`` verified images are
  added to the query (ASMK aggregates them per visual word with the query's own: average
  query expansion in ASMK's terms), the database is searched again and the new top ``N`` are
  verified against the original query. A query with no verified image is not expanded.
"""

from __future__ import annotations

import logging
import math
import os
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import NamedTuple

import torch

from .._device import resolve_device
from .._image import display_name
from ..errors import FingerprintError, IndexFileError, NotFoundError, UsageError
from ..features import open_features
from ..index_file import IndexInfo
from ..matching import MatchRule, background_similarity
from ..types import LocalFeatures
from .extract import model_fingerprint
from .verify import MODELS, match_many, ransac

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_RERANK", "MIN_SUPPORT", "SCALE_TOLERANCE", "TOKEN_MIN_SUPPORT", "TOKEN_QUERY_NUM", "TOKEN_THRESHOLD", "VERIFY_FLOOR",
    "VERIFY_THRESHOLD", "PairCheck", "RerankSettings", "Reranker", "expand_query", "reranker_for", "search_reranker", "verification_rule", "verify_matches",
]

#: Short-list length re-ranked by default (``lit search --rerank``).
DEFAULT_RERANK = 100
#: Lowest cosine similarity of a tentative match (mutual nearest neighbours).
VERIFY_FLOOR = 0.5
#: Inlier distance, as a fraction of the image size the features were extracted at.
VERIFY_THRESHOLD = 40 / 512
#: Largest factor between a transformation's scale and the matched super-features' scale ratio.
SCALE_TOLERANCE = 1.5
#: Support (distinct query templates among the inliers) that makes a candidate verified.
MIN_SUPPORT = 7
#: Tokens of a query matched with each candidate's (its strongest; a candidate's are all used,
#: so that a match is still the mutual nearest neighbour among them): half the cost.
TOKEN_QUERY_NUM = 1024
#: Inlier distance of token verification, as a fraction of the image size (1.5 cells of a
#: stride-16 map: 24 px at the tokens' 640 px).
TOKEN_THRESHOLD = 24 / 640
#: Inliers that make a candidate verified by tokens.
TOKEN_MIN_SUPPORT = 8


@dataclass(frozen=True)
class RerankSettings:
    """How candidates are verified (defaults: the module's constants).

    Attributes:
        model: ``"similarity"`` or ``"affine"`` (:data:`lit.pipeline.verify.MODELS`).
        threshold: inlier distance as a fraction of ``image_size``.
        image_size: the size (longest side, pixels) the features were extracted at.
        min_support: support (distinct query templates among the inliers) that makes a
            candidate verified.
        floor: lowest cosine of a tentative match (mutual nearest neighbours); ``"model"``:
            the model's own threshold (lit-effl0 has none).
        margin: background margin of the tentative matches, for a model with a background
            bank (``None``: no background test; ``"model"``: the model's own margin).
        scale_tolerance: see :func:`lit.pipeline.verify.ransac` (``None``: no scale test).
        hypotheses: RANSAC hypotheses per candidate.
        seed: RANSAC seed.
        query_num: match only the first (strongest) ``query_num`` features of a query
            (``None``: all).
    """

    model: str = "similarity"
    threshold: float = VERIFY_THRESHOLD
    image_size: int = 512
    min_support: int = MIN_SUPPORT
    floor: float | None | str = VERIFY_FLOOR
    margin: float | None | str = None
    scale_tolerance: float | None = SCALE_TOLERANCE
    hypotheses: int = 128
    seed: int = 0
    query_num: int | None = None

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise UsageError(f"verification model must be one of {sorted(MODELS)}, got {self.model!r}")
        if self.query_num is not None and (isinstance(self.query_num, bool) or not isinstance(self.query_num, int)
                                           or self.query_num < 1):
            raise UsageError(f"query_num must be a positive int or None, got {self.query_num!r}")
        if not self.threshold > 0 or self.image_size < 1 or self.min_support < 1 or self.hypotheses < 1:
            raise UsageError("threshold, image_size, min_support and hypotheses must be positive, got "
                             f"{self.threshold}, {self.image_size}, {self.min_support}, {self.hypotheses}")

    @classmethod
    def tokens(cls, **changes) -> RerankSettings:
        """The settings of verification by local tokens (:mod:`lit.models.tokens`): tentative
        matches are mutual nearest neighbours with a cosine of at least :data:`VERIFY_FLOOR`
        (as for super-features), inliers within
        :data:`TOKEN_THRESHOLD`, :data:`TOKEN_MIN_SUPPORT` of them verify (each token is its
        own template, so the support is the inlier count), the query's
        :data:`TOKEN_QUERY_NUM` strongest tokens against all of a candidate's."""
        from ..models.tokens import TOKEN_IMAGE_SIZE

        return replace(cls(threshold=TOKEN_THRESHOLD, image_size=TOKEN_IMAGE_SIZE, min_support=TOKEN_MIN_SUPPORT,
                           query_num=TOKEN_QUERY_NUM),
                       **changes)


class PairCheck(NamedTuple):
    """Verification of one query-candidate pair.

    Shape:
        - query_idx, cand_idx: :math:`(M,)` rows of the matched super-features.
        - inliers: :math:`(M,)` bool, the matches that agree with ``transform``.
        - transform: :math:`(2, 3)` query pixels to candidate pixels.
        - query_templates: :math:`(M,)` template index of each matched query super-feature
          (``None``: unknown, each match its own).
    """

    query_idx: torch.Tensor
    cand_idx: torch.Tensor
    inliers: torch.Tensor
    transform: torch.Tensor
    query_templates: torch.Tensor | None = None

    @property
    def num_inliers(self) -> int:
        return int(self.inliers.sum())

    @property
    def support(self) -> int:
        """Distinct query templates among the inliers (a template matched at several scales
        counts once)."""
        if self.query_templates is None:
            return self.num_inliers
        return len(torch.unique(self.query_templates[self.inliers]))


def verification_rule(rule: MatchRule, floor: float | None | str = VERIFY_FLOOR,
                      margin: float | None | str = None) -> MatchRule:
    """The rule of the tentative matches that are verified: mutual nearest neighbours with a
    cosine of at least ``floor`` (``"model"``: the model's threshold) and, for a model with a
    background bank, its background test with ``margin`` (``None``: none; ``"model"``: the
    model's margin)."""
    threshold = rule.threshold if floor == "model" else (None if floor is None else float(floor))
    if rule.background is None or margin is None:
        return MatchRule(threshold)
    return MatchRule(threshold, rule.margin if margin == "model" else float(margin), rule.background)


class Reranker:
    """Verifies candidates of a database against queries; caches the database images it
    reads (features and their background similarities) for later queries.

    Args:
        database: ``get(i)`` giving the :class:`LocalFeatures` of database image ``i``
            (e.g. an open :class:`lit.features.FeatureCollection`'s ``__getitem__``), or a
            sequence of them.
        rule: the model's match rule (``model.match_rule()``).
        settings: :class:`RerankSettings`.
        device: where matching and RANSAC run (``None``: CPU).
        cache: database images kept in memory (least recently used dropped).
    """

    def __init__(self, database: Callable[[int], LocalFeatures] | Sequence[LocalFeatures], rule: MatchRule,
                 settings: RerankSettings | None = None, *, device: str | torch.device | None = None,
                 cache: int = 4096) -> None:
        self.get = database if callable(database) else database.__getitem__
        self.settings = settings or RerankSettings()
        self.rule = verification_rule(rule, self.settings.floor, self.settings.margin)
        self.device = resolve_device(device) if device is not None else torch.device("cpu")
        self._cache: OrderedDict[int, tuple[LocalFeatures, torch.Tensor | None]] = OrderedDict()
        self._cache_size = cache
        self._owned = None
        if self.rule.background is not None:
            self.rule = MatchRule(self.rule.threshold, self.rule.margin, self.rule.background.to(self.device).float())

    def _features(self, f: LocalFeatures) -> tuple[LocalFeatures, torch.Tensor | None]:
        """Features on the device, and room for their background similarities (NaN: not yet computed)."""
        f = LocalFeatures(*(t.to(self.device) if t is not None else None for t in f))
        bg = torch.full((len(f),), math.nan, device=self.device) if self.rule.background is not None else None
        return f, bg

    def _background(self, f: LocalFeatures, bg: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Background similarity of rows ``rows`` of ``f``, computed once per row and kept in ``bg``."""
        todo = rows[torch.isnan(bg[rows])]
        if len(todo):
            bg[todo] = background_similarity(f.descriptors[todo], self.rule.background).to(bg.dtype)
        return bg[rows]

    def _database(self, i: int) -> tuple[LocalFeatures, torch.Tensor | None]:
        hit = self._cache.get(i)
        if hit is None:
            hit = self._features(self.get(i))
            self._cache[i] = hit
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(i)
        return hit

    def database(self, i: int) -> LocalFeatures:
        """Features of database image ``i`` (on the reranker's device; cached)."""
        return self._database(int(i))[0]

    def close(self) -> None:
        """Close the feature file it reads, if it opened one (:func:`reranker_for`)."""
        if self._owned is not None:
            self._owned.close()
            self._owned = None

    def __enter__(self) -> Reranker:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def verify(self, query: LocalFeatures, ids: Sequence[int]) -> list[PairCheck]:
        """Matches and their geometric verification between ``query`` and database images ``ids``."""
        if self.settings.query_num is not None:
            query = LocalFeatures(*(t[: self.settings.query_num] if t is not None else None for t in query))
        q, _ = self._features(query)
        qbg = background_similarity(q.descriptors, self.rule.background) if self.rule.background is not None else None
        return self._verify(q, qbg, ids)

    def _verify(self, q: LocalFeatures, qbg, ids: Sequence[int]) -> list[PairCheck]:
        if not len(ids):
            return []
        cands = [self._database(int(i)) for i in ids]
        feats = [c[0] for c in cands]
        pm = match_many(q, feats, self.rule, query_background=qbg,
                        candidate_background=lambda j, rows: self._background(cands[j][0], cands[j][1], rows))
        if q.positions is None or any(f.positions is None for f in feats):
            raise UsageError("re-ranking needs the super-features' positions (feature files of an early lit have "
                             "none): extract the features again")
        b, m = pm.valid.shape
        src = q.positions[pm.query_idx].float()
        dst = torch.zeros(b, m, 2, device=self.device)
        ratio = torch.ones(b, m, device=self.device)
        for j, f in enumerate(feats):
            dst[j] = f.positions[pm.cand_idx[j]].float()
            ratio[j] = q.scales[pm.query_idx[j]].float() / f.scales[pm.cand_idx[j]].float()
        s = self.settings
        v = ransac(src, dst, pm.valid, model=s.model, threshold=s.threshold * s.image_size, hypotheses=s.hypotheses,
                   seed=s.seed, scale_ratio=ratio, scale_tolerance=s.scale_tolerance)
        out = []
        for j in range(b):
            keep = pm.valid[j]
            qi = pm.query_idx[j][keep]
            out.append(PairCheck(qi.cpu(), pm.cand_idx[j][keep].cpu(), v.inliers[j][keep].cpu(), v.transform[j].cpu(),
                                 q.superfeature_ids[qi].cpu()))
        return out

    def rerank(self, query: LocalFeatures, ids: Sequence[int], scores: Sequence[float], top: int
               ) -> tuple[list[int], list[float], list[int | None], list[PairCheck]]:
        """Re-rank the first ``top`` of a ranked list (``ids`` with ASMK ``scores``, best first).

        Returns:
            ``(ids, scores, support, checks)``: the new order, the new scores (``support +
            ASMK score`` for verified images, the ASMK score otherwise), the support of each
            (:attr:`PairCheck.support`; ``None`` below ``top``) and the checks of the first
            ``top`` in the new order.
        """
        if top < 0:
            raise UsageError(f"the re-ranked short list must be >= 0 images, got {top}")
        ids, scores = [int(i) for i in ids], [float(s) for s in scores]
        n = min(top, len(ids))
        if n == 0:
            return ids, scores, [None] * len(ids), []
        checks = self.verify(query, ids[:n])
        head = []
        for pos, (i, s, c) in enumerate(zip(ids[:n], scores[:n], checks, strict=True)):
            k = c.support
            verified = k >= self.settings.min_support
            head.append((0 if verified else 1, -k if verified else 0, pos, i, s + k if verified else s, k, c))
        head.sort(key=lambda h: h[:3])
        return ([h[3] for h in head] + ids[n:], [h[4] for h in head] + scores[n:],
                [h[5] for h in head] + [None] * (len(ids) - n), [h[6] for h in head])

    def is_verified(self, support: int | None) -> bool:
        return support is not None and support >= self.settings.min_support


def expand_query(query: LocalFeatures, neighbours: Sequence[LocalFeatures], checks: Sequence[PairCheck]
                 ) -> LocalFeatures:
    """The query with the inlier super-features of verified neighbours added (their rows in the
    neighbour, ``checks[i].cand_idx[checks[i].inliers]``), on the query's device."""
    parts = [query]
    for f, c in zip(neighbours, checks, strict=True):
        rows = c.cand_idx[c.inliers].to(f.descriptors.device)
        parts.append(LocalFeatures(*(t[rows] if t is not None else None for t in f)))
    if len(parts) == 1:
        return query
    dev = query.descriptors.device
    fields = list(zip(*parts, strict=True))
    cat = [torch.cat([t.to(dev) for t in ts]) if all(t is not None for t in ts) else None for ts in fields]
    return LocalFeatures(*cat)


def reranker_for(info: IndexInfo, model_or_rule, settings: RerankSettings | None = None, *,
                 features: str | os.PathLike | None = None, device: str | torch.device | None = None,
                 tokens: str | os.PathLike | None = None) -> Reranker:
    """A :class:`Reranker` over an index's database: the super-features are read from the
    feature file the index records (``features`` replaces it), the match rule is the model's
    (``model.match_rule()``, or a :class:`MatchRule` given), the image size that of the
    extraction (the feature file's settings).

    With ``tokens`` (a token file of the database, ``lit extract --tokens``), the reranker
    verifies local tokens instead (:mod:`lit.models.tokens`), under
    :meth:`RerankSettings.tokens` unless ``settings`` are given; the queries' tokens go
    to :func:`lit.pipeline.search` as ``verify_queries``. ``model_or_rule`` must then be the
    model (its token extractor made the file).

    Raises:
        NotFoundError: the index records no feature file, or it is gone.
        IndexFileError: the feature file holds other images than the index.
        FingerprintError: the file comes from another model.
    """
    if tokens is not None:
        if isinstance(model_or_rule, MatchRule):
            raise UsageError("verification by tokens needs the model whose token extractor made the token file")
        from ..models.tokens import token_extractor

        path, what, maker, rule = os.fspath(tokens), "token file", token_extractor(model_or_rule), MatchRule(None)
        settings = settings or RerankSettings.tokens()
    else:
        path, what, maker = os.fspath(features) if features is not None else info.features, "feature file", model_or_rule
        if not path:
            raise NotFoundError("the index records no feature file: give the database feature file for re-ranking")
        rule = model_or_rule if isinstance(model_or_rule, MatchRule) else model_or_rule.match_rule()
    if not os.path.exists(path):
        gone = "the index's feature file is gone (re-ranking reads the database super-features from it): give its new place"
        raise NotFoundError(f"{display_name(path)}: {gone if tokens is None else 'no such token file'}")
    store = open_features(path)
    try:
        if not isinstance(maker, MatchRule) and not _same_model(maker, store):
            raise FingerprintError(f"{display_name(path)}: the database {what} comes from another model than the one "
                                   "that would verify it: use the index's model")
        names = list(store.names)
        row = {n: i for i, n in enumerate(names)}
        missing = [n for n in info.names if n not in row]
        if missing:
            raise IndexFileError(f"{display_name(path)}: {len(missing)} indexed images are not in this {what}, "
                                 f"e.g. {missing[0]}")
        rows = [row[n] for n in info.names]
        size = int(store.settings.get("image_size") or RerankSettings.image_size)
    except Exception:
        store.close()
        raise
    settings = replace(settings or RerankSettings(), image_size=size)
    r = Reranker(lambda i: store[rows[i]], rule, settings, device=device)
    r._owned = store
    return r


def _same_model(model, store) -> bool:
    """Whether ``model`` made the features of ``store`` (its fingerprint under the file's
    extraction settings; unknown settings or fingerprint: assumed so)."""
    settings, fp = store.settings, store.fingerprint
    if not fp or not settings:
        return True
    args = (settings.get("scales") or model.cfg.runtime.scales, settings.get("features_num") or model.cfg.runtime.features_num,
            settings.get("image_size"))
    half = bool(getattr(store, "half", False))
    return any(model_fingerprint(model, *args, amp=amp, half=half) == fp for amp in (None, torch.bfloat16))


def search_reranker(info: IndexInfo, model, rerank: int | None = None, expand: int = 0, *,
                    settings: RerankSettings | None = None, features: str | os.PathLike | None = None,
                    device: str | torch.device | None = None, tokens: str | os.PathLike | None = None
                    ) -> tuple[Reranker | None, int]:
    """The reranker of a search and its short list: ``lit search``'s policy.

    ``rerank=None`` asks for the default (:data:`DEFAULT_RERANK`) where it can be had: when the
    index's feature file is missing or was made by another model than ``model``, the search
    goes on with ASMK alone and a logged warning says why. An explicit ``rerank > 0`` (or
    ``expand > 0``) raises instead. ``rerank=0`` and ``expand=0``: no reranker.

    Returns:
        ``(reranker or None, short-list length)``; close the reranker after the search.
    """
    explicit = rerank is not None
    n = DEFAULT_RERANK if rerank is None else rerank
    if isinstance(n, bool) or not isinstance(n, int) or n < 0 or expand < 0:
        raise UsageError(f"rerank and expand must be ints >= 0, got {rerank!r} and {expand!r}")
    if expand and not n:
        raise UsageError("query expansion adds verified images to the query: it needs re-ranking (rerank > 0)")
    if not n:
        return None, 0
    try:
        return reranker_for(info, model, settings, features=features, device=device, tokens=tokens), n
    except (NotFoundError, FingerprintError, IndexFileError) as err:
        if explicit or expand:
            raise
        log.warning(f"searching without re-ranking: {err}")
        return None, 0


def verify_matches(feats_a: LocalFeatures, feats_b: LocalFeatures, matches, settings: RerankSettings | None = None
                   ) -> PairCheck:
    """Geometric verification of given matches between two images (``lit match``): which
    agree with one transformation (:func:`lit.pipeline.verify.ransac` under ``settings``).

    ``matches``: a :class:`lit.types.Matches` (e.g. ``rule.match(feats_a, feats_b)``).
    """
    s = settings or RerankSettings()
    ia, ib = matches.indices_a.cpu(), matches.indices_b.cpu()
    if feats_a.positions is None or feats_b.positions is None:
        raise UsageError("verification needs the super-features' positions")
    src, dst = feats_a.positions.cpu()[ia].float(), feats_b.positions.cpu()[ib].float()
    ratio = feats_a.scales.cpu()[ia].float() / feats_b.scales.cpu()[ib].float()
    v = ransac(src[None], dst[None], model=s.model, threshold=s.threshold * s.image_size, hypotheses=s.hypotheses,
               seed=s.seed, scale_ratio=ratio[None], scale_tolerance=s.scale_tolerance)
    return PairCheck(ia, ib, v.inliers[0], v.transform[0], feats_a.superfeature_ids.cpu()[ia])
