"""The Revisited Oxford / Paris evaluation protocol (SPEC section 4) and the classic one.

Ground truth (the revisitop ``gnd_*.pkl`` format) gives, per query, lists of database
indices: ``easy``, ``hard`` and ``junk`` (plus the query box ``bbx``). Three protocols
are scored from the same ranking:

============  ======================  =======================
protocol      positives               ignored
============  ======================  =======================
``easy``      easy                    junk ∪ hard
``medium``    easy ∪ hard             junk
``hard``      hard                    junk ∪ easy
============  ======================  =======================

Ignored images are removed from the ranking before scoring. Average precision uses the
trapezoid rule over the recall steps; queries without positives are left out of the
means (their per-query AP is ``nan``). mP@k uses 1-based positive ranks and
``k' = min(rank of the last positive found, k)``, so that a query with fewer than ``k``
positives can still reach a precision of 1.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .._pickle import restricted_load
from ..errors import UsageError

__all__ = [
    "PROTOCOLS", "classic_map", "compute_ap", "format_table", "load_ground_truth",
    "revisited_map",
]

PROTOCOLS = ("easy", "medium", "hard")


# --------------------------------------------------------------------------- ground truth
def load_ground_truth(path: str | os.PathLike) -> dict:
    """Read a revisitop ground-truth file (``gnd_roxford5k.pkl``, ``gnd_rparis6k.pkl``).

    The file is read with a restricted unpickler (containers, numbers, strings and numpy
    arrays only; see :mod:`lit._pickle`) and validated.

    Args:
        path: the ``.pkl`` file.

    Returns:
        ``{"imlist": [str] * n_images, "qimlist": [str] * n_queries,
        "gnd": [{"bbx": [x1, y1, x2, y2], "easy": [int], "hard": [int], "junk": [int]}]}``
        as stored (lists of database indices). Files in the classic Oxford/Paris format,
        whose entries hold ``ok`` and ``junk`` instead of ``easy``/``hard``, are accepted
        too (evaluate them with :func:`classic_map`).

    Raises:
        lit._pickle.UnsafePickleError: the file refers to code (it is refused unread).
        ValueError: the content is not a ground-truth dict (the message names the file and
            what is missing).
    """
    path = os.fspath(path)
    cfg = restricted_load(path)
    validate_ground_truth(cfg, source=path)
    return cfg


def validate_ground_truth(cfg: Any, source: str = "ground truth") -> None:
    """Check the structure of a ground-truth dict; raise ``ValueError`` naming ``source``."""
    if not isinstance(cfg, Mapping):
        raise UsageError(f"{source}: expected a dict with keys imlist, qimlist, gnd; got {type(cfg).__name__}")
    missing = [k for k in ("imlist", "qimlist", "gnd") if k not in cfg]
    if missing:
        raise UsageError(f"{source}: missing key(s) {', '.join(missing)} (have: {', '.join(map(str, cfg))})")
    n_images, n_queries = len(cfg["imlist"]), len(cfg["qimlist"])
    gnd = cfg["gnd"]
    if not isinstance(gnd, Sequence) or len(gnd) != n_queries:
        raise UsageError(f"{source}: 'gnd' must be a list with one entry per query ({n_queries}), got "
                         f"{len(gnd) if isinstance(gnd, Sequence) else type(gnd).__name__}")
    for i, entry in enumerate(gnd):
        if not isinstance(entry, Mapping):
            raise UsageError(f"{source}: gnd[{i}] must be a dict, got {type(entry).__name__}")
        if "ok" in entry and "easy" not in entry:
            required = ("ok", "junk")
        else:
            required = ("easy", "hard", "junk")
        missing = [k for k in required if k not in entry]
        if missing:
            raise UsageError(f"{source}: gnd[{i}] is missing key(s) {', '.join(missing)} "
                             f"(need bbx, easy, hard, junk; have {', '.join(map(str, entry))})")
        for key in required:
            idx = np.asarray(entry[key]).reshape(-1)
            if idx.size == 0:
                continue
            if not np.issubdtype(idx.dtype, np.integer):
                raise UsageError(f"{source}: gnd[{i}][{key!r}] must hold integer image indices, got {idx.dtype}")
            if idx.min() < 0 or idx.max() >= n_images:
                raise UsageError(f"{source}: gnd[{i}][{key!r}] has indices outside [0, {n_images})")
        if "bbx" in entry and entry["bbx"] is not None and np.asarray(entry["bbx"]).size != 4:
            raise UsageError(f"{source}: gnd[{i}]['bbx'] must be [x1, y1, x2, y2]")


# --------------------------------------------------------------------------- metrics
def compute_ap(ranks: Sequence[int] | np.ndarray, npos: int) -> float:
    """Average precision from the positions of the positives in a ranking.

    Args:
        ranks: 0-based positions of the retrieved positives, after ignored images have
            been removed from the ranking (sorted ascending; sorted here if not).
            Positives that were not retrieved are simply absent.
        npos: total number of positives of the query.

    Returns:
        AP in ``[0, 1]``: for the j-th positive (0-based) at position r, adds
        ``(p0 + p1) / 2 / npos`` with ``p0 = j / r`` (1 when ``r == 0``) and
        ``p1 = (j + 1) / (r + 1)``.

    Example:
        >>> compute_ap([0, 2], 2)  # positives first and third: (1 + 1)/2/2 + (1/2 + 2/3)/2/2
        0.7916666666666666
    """
    r = np.sort(np.asarray(ranks, dtype=np.float64).reshape(-1))
    if npos <= 0:
        raise UsageError(f"npos must be positive, got {npos}")
    if r.size > npos:
        raise UsageError(f"{r.size} positive ranks given for npos={npos}")
    if r.size == 0:
        return 0.0
    if r[0] < 0:
        raise UsageError("ranks must be non-negative")
    j = np.arange(r.size, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        p0 = np.where(r == 0, 1.0, j / np.where(r == 0, 1.0, r))
    p1 = (j + 1.0) / (r + 1.0)
    return float(np.sum((p0 + p1) * 0.5) / npos)


def _as_ranks(ranks: Any, n_queries: int) -> np.ndarray:
    if hasattr(ranks, "detach"):  # torch tensor
        ranks = ranks.detach().cpu().numpy()
    ranks = np.asarray(ranks)
    if ranks.ndim != 2:
        raise UsageError(f"ranks must be a 2-D (database x queries) array, got shape {ranks.shape}")
    if not np.issubdtype(ranks.dtype, np.integer):
        raise TypeError(f"ranks must hold integer database indices, got dtype {ranks.dtype}")
    if ranks.shape[1] != n_queries:
        hint = " (did you pass it as queries x database? transpose it)" if ranks.shape[0] == n_queries else ""
        raise UsageError(f"ranks has {ranks.shape[1]} columns but the ground truth has {n_queries} queries{hint}")
    if ranks.size and ranks.min() < 0:
        raise UsageError("ranks must hold non-negative database indices")
    return ranks


def _as_kappas(kappas: Sequence[int]) -> list[int]:
    out = [int(k) for k in kappas]
    if any(k < 1 for k in out):
        raise UsageError(f"kappas must be positive integers, got {tuple(kappas)}")
    return out


def _indices(entry: Mapping, keys: Sequence[str]) -> np.ndarray:
    parts = [np.asarray(entry.get(k, []), dtype=np.int64).reshape(-1) for k in keys]
    return np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.int64)


def _score(ranks: np.ndarray, positives: list[np.ndarray], ignored: list[np.ndarray],
           kappas: list[int]) -> dict:
    """AP and P@k per query given positive / ignored index sets (one per query)."""
    n_q = ranks.shape[1]
    aps = np.full(n_q, np.nan)
    prs = np.full((n_q, len(kappas)), np.nan)
    size = int(max([ranks.max(initial=-1)] + [p.max(initial=-1) for p in positives]
                   + [g.max(initial=-1) for g in ignored])) + 1
    label = np.zeros(size, dtype=np.int8)  # 0 negative, 1 positive, 2 ignored
    for i in range(n_q):
        pos, ign = positives[i], ignored[i]
        if pos.size == 0:
            continue  # no positive for this protocol: left out of the means
        label[ign] = 2
        label[pos] = 1  # an index listed as both counts as positive
        lab = label[ranks[:, i]]
        label[ign] = 0
        label[pos] = 0
        lab = lab[lab != 2]
        found = np.flatnonzero(lab == 1)
        aps[i] = compute_ap(found, pos.size)
        if found.size == 0:
            prs[i] = 0.0
            continue
        found1 = found + 1
        last = found1[-1]
        for j, k in enumerate(kappas):
            kq = min(last, k)
            prs[i, j] = np.count_nonzero(found1 <= kq) / kq
    valid = ~np.isnan(aps)
    if valid.any():
        m = float(np.mean(aps[valid]))
        mp = [float(v) for v in np.mean(prs[valid], axis=0)]
    else:
        m, mp = math.nan, [math.nan] * len(kappas)
    return {"map": m, "mp@k": mp, "aps": aps, "kappas": list(kappas)}


def revisited_map(ranks: Any, gnd: Sequence[Mapping], kappas: Sequence[int] = (1, 5, 10)) -> dict:
    """mAP and mP@k of a ranking under the Easy, Medium and Hard protocols.

    Args:
        ranks: database indices sorted by decreasing similarity, one column per query
            (numpy array or torch tensor of integers). It may hold only the top of each
            ranking (fewer rows than database images); positives not in it count as
            not retrieved. Each column should not repeat an index.
        gnd: one dict per query with ``easy``, ``hard`` and ``junk`` index lists (the
            ``"gnd"`` entry of :func:`load_ground_truth`).
        kappas: the k of mP@k.

    Returns:
        ``{"easy" | "medium" | "hard": {"map": float, "mp@k": [float] * len(kappas),
        "aps": (Q,) array, "kappas": [int]}}`` as fractions (not x100). ``aps`` is
        ``nan`` for the queries left out (no positive in that protocol); ``map`` is
        ``nan`` if every query is left out.

    Shape:
        - ranks: :math:`(N_{db}, Q)` (or :math:`(K, Q)` for a top-K ranking).
    """
    if isinstance(gnd, Mapping) and "gnd" in gnd:
        gnd = gnd["gnd"]
    for i, entry in enumerate(gnd):
        if not isinstance(entry, Mapping) or not all(k in entry for k in ("easy", "hard", "junk")):
            raise UsageError(f"gnd[{i}] must be a dict with easy, hard and junk index lists "
                             "(use classic_map for ok/junk ground truth)")
    ranks = _as_ranks(ranks, len(gnd))
    kappas = _as_kappas(kappas)
    spec = {
        "easy": (("easy",), ("junk", "hard")),
        "medium": (("easy", "hard"), ("junk",)),
        "hard": (("hard",), ("junk", "easy")),
    }
    res = {}
    for protocol, (pos_keys, ign_keys) in spec.items():
        positives = [_indices(g, pos_keys) for g in gnd]
        ignored = [_indices(g, ign_keys) for g in gnd]
        res[protocol] = _score(ranks, positives, ignored, kappas)
    return res


def classic_map(ranks: Any, gnd: Sequence[Mapping], kappas: Sequence[int] = (1, 5, 10)) -> dict:
    """mAP and mP@k under the original Oxford5k / Paris6k protocol.

    Positives are the ``ok`` images (good and ok of the original lists), or ``easy`` ∪
    ``hard`` for revisited ground truth; ``junk`` images are ignored.

    Args:
        ranks: :math:`(N_{db}, Q)` integer array, as for :func:`revisited_map`.
        gnd: one dict per query with ``ok`` (or ``easy`` and ``hard``) and ``junk``.
        kappas: the k of mP@k.

    Returns:
        ``{"map": float, "mp@k": [float], "aps": (Q,) array, "kappas": [int]}``.
    """
    if isinstance(gnd, Mapping) and "gnd" in gnd:
        gnd = gnd["gnd"]
    positives, ignored = [], []
    for i, entry in enumerate(gnd):
        if not isinstance(entry, Mapping):
            raise UsageError(f"gnd[{i}] must be a dict, got {type(entry).__name__}")
        if "ok" in entry:
            positives.append(_indices(entry, ("ok",)))
        elif "easy" in entry and "hard" in entry:
            positives.append(_indices(entry, ("easy", "hard")))
        else:
            raise UsageError(f"gnd[{i}] needs 'ok' (or 'easy' and 'hard') index lists")
        ignored.append(_indices(entry, ("junk",)))
    ranks = _as_ranks(ranks, len(gnd))
    return _score(ranks, positives, ignored, _as_kappas(kappas))


# --------------------------------------------------------------------------- reporting
def _cells(result: Mapping, k: int) -> tuple[str, str]:
    kappas = list(result.get("kappas", [1, 5, 10]))
    mp = list(result.get("mp@k", []))
    m = 100.0 * float(result["map"])
    p = 100.0 * float(mp[kappas.index(k)]) if k in kappas and len(mp) == len(kappas) else math.nan
    return f"{m:6.2f}", f"{p:6.2f}"


def format_table(res: Mapping, k: int = 10, title: str | None = None) -> str:
    """Format results as a paper-like text table (mAP and mP@k, x100).

    Args:
        res: the output of :func:`revisited_map` or :func:`classic_map`, or a mapping
            ``dataset name -> such output`` (one row per dataset).
        k: which mP@k column to show (must be one of the evaluated kappas, else ``nan``).
        title: optional first line.

    Returns:
        The table as a string (no trailing newline).

    Example:
        >>> print(format_table({"roxford5k": revisited_map(ranks, gnd)}))  # doctest: +SKIP
        dataset   | Easy mAP  mP@10 | Medium mAP  mP@10 | Hard mAP  mP@10
        roxford5k |    85.01  81.29 |      68.46  86.14 |    44.32  62.86
    """
    if not isinstance(res, Mapping) or not res:
        raise TypeError("format_table expects the dict returned by revisited_map or classic_map")
    if all(p in res for p in PROTOCOLS) or "map" in res:
        rows = {"result": res}
    else:
        rows = dict(res)
    for name, r in rows.items():
        if not isinstance(r, Mapping) or not (all(p in r for p in PROTOCOLS) or "map" in r):
            raise TypeError(f"format_table: entry {name!r} is not a revisited_map/classic_map result")
    width = max([len("dataset")] + [len(str(n)) for n in rows])
    revisited = [n for n, r in rows.items() if all(p in r for p in PROTOCOLS)]
    classic = [n for n in rows if n not in revisited]
    lines = [title] if title else []
    if revisited:
        head = f"{'dataset':<{width}} |" + " |".join(
            f" {p.capitalize()} mAP {f'mP@{k}':>6}" for p in PROTOCOLS)
        lines.append(head)
        for n in revisited:
            cells = []
            for p in PROTOCOLS:
                m, pk = _cells(rows[n][p], k)
                label = len(p.capitalize()) + 4
                cells.append(f" {m:>{label}} {pk:>6}")
            lines.append(f"{str(n):<{width}} |" + " |".join(cells))
    if classic:
        lines.append(f"{'dataset':<{width}} |    mAP {f'mP@{k}':>6}")
        for n in classic:
            m, pk = _cells(rows[n], k)
            lines.append(f"{str(n):<{width}} | {m:>6} {pk:>6}")
    return "\n".join(lines)
