"""Training tuples: one query, one positive and ``K`` hard negatives, from two sources.

Both sources give the same :class:`TrainingTuple` objects:

* **SfM-120k** (or any cirtorch-style database): an :class:`ImageDatabase` with image
  paths, a cluster id per image and ``(query, positive)`` index pairs.
* **Your own photos**: a folder of images, optionally one sub-folder per scene
  (:meth:`ImageDatabase.from_folder`). The positive of a query is a synthetic other view of
  it (:mod:`lit.train.views`); the scene (sub-folder, or the photo itself when there are
  none) plays the role of the cluster.

Each epoch (:meth:`TupleDataset.mine`), ``queries_per_epoch`` queries and a pool of
``pool_size`` images are drawn at random, global descriptors of all of them are computed
with the current model, and every query gets the ``K`` pool images most similar to it that
are *not in its cluster*, taking *at most one image per cluster*
(:func:`mine_hard_negatives`). All randomness comes from ``(seed, epoch)`` and the tuple
index, so a tuple is the same whichever process or worker loads it, and a resumed run sees
exactly the tuples of an uninterrupted one.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from .._image import list_images, load_image
from ..errors import UsageError
from .config import DataConfig, ViewConfig
from .views import synthetic_view


class TupleSpec(NamedTuple):
    """Indices of one tuple into its :class:`ImageDatabase`.

    Attributes:
        query: query image.
        positive: positive image; equal to ``query`` when ``synthetic`` is true.
        negatives: the mined negatives (at most ``K``; fewer when the pool has too few clusters).
        synthetic: the positive is a synthetic view of the query.
    """

    query: int
    positive: int
    negatives: tuple[int, ...]
    synthetic: bool = False


class TrainingTuple(NamedTuple):
    """Images of one tuple, RGB in ``[0, 1]`` (sizes may differ).

    Shape:
        - query, positive: :math:`(3, H, W)`.
        - negatives: ``K`` tensors :math:`(3, H_k, W_k)`.
    """

    query: Tensor
    positive: Tensor
    negatives: tuple[Tensor, ...]
    spec: TupleSpec

    @property
    def images(self) -> list[Tensor]:
        """``[query, positive, *negatives]``."""
        return [self.query, self.positive, *self.negatives]


def _seed(*keys: int) -> int:
    """A 63-bit seed derived from integer keys (numpy SeedSequence hashing)."""
    state = np.random.SeedSequence([int(k) for k in keys]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & ((1 << 63) - 1)


def cirtorch_image_path(root: str, cid: str) -> str:
    """Path of SfM-120k image ``cid``: ``root/cid[-2:]/cid[-4:-2]/cid[-6:-4]/cid``."""
    return os.path.join(root, cid[-2:], cid[-4:-2], cid[-6:-4], cid)


@dataclass(frozen=True)
class ImageDatabase:
    """Training images with a cluster (scene) id each, and optional query/positive pairs.

    Args:
        paths: image files.
        clusters: cluster id of every image; negatives never share the query's cluster.
        pairs: ``(query, positive)`` index pairs; ``None`` means every image can be a query
            and its positive is a synthetic view.
    """

    paths: tuple[str, ...]
    clusters: tuple[int, ...]
    pairs: tuple[tuple[int, int], ...] | None = None

    def __post_init__(self) -> None:
        if len(self.paths) != len(self.clusters):
            raise UsageError(f"{len(self.paths)} paths but {len(self.clusters)} cluster ids")
        if not self.paths:
            raise UsageError("the image database is empty")
        if self.pairs is not None:
            n = len(self.paths)
            for q, p in self.pairs:
                if not (0 <= q < n and 0 <= p < n):
                    raise UsageError(f"pair ({q}, {p}) out of range for {n} images")

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def synthetic_positives(self) -> bool:
        return self.pairs is None

    @classmethod
    def from_cirtorch(cls, db_file: str | os.PathLike, root: str | os.PathLike, split: str = "train") -> ImageDatabase:
        """Read a cirtorch database pickle (``retrieval-SfM-120k.pkl``).

        The file is read with lit's restricted unpickler (no code runs). ``db[split]`` holds
        ``cids`` (image names), ``cluster``, ``qidxs`` and ``pidxs``.
        """
        from .._pickle import restricted_load

        db = restricted_load(os.fspath(db_file))
        if not isinstance(db, dict) or split not in db:
            raise UsageError(f"{db_file}: no {split!r} split (keys: {sorted(db)[:5] if isinstance(db, dict) else type(db).__name__})")
        part = db[split]
        missing = {"cids", "cluster", "qidxs", "pidxs"} - set(part)
        if missing:
            raise UsageError(f"{db_file}: split {split!r} lacks {sorted(missing)}")
        root = os.fspath(root)
        paths = tuple(cirtorch_image_path(root, str(c)) for c in part["cids"])
        clusters = tuple(int(c) for c in part["cluster"])
        pairs = tuple((int(q), int(p)) for q, p in zip(part["qidxs"], part["pidxs"], strict=True))
        return cls(paths, clusters, pairs)

    @classmethod
    def from_folder(cls, root: str | os.PathLike, paths: Sequence[str] | None = None) -> ImageDatabase:
        """Your own photos: every image under ``root``; the scene is the first sub-folder.

        Photos directly in ``root`` are each their own scene. Positives are synthetic views.

        Args:
            root: the photo folder.
            paths: use these files (under ``root``) instead of listing the folder.
        """
        root = os.fspath(root)
        paths = list(list_images(root) if paths is None else paths)
        if not paths:
            raise UsageError(f"{root}: no images found")
        return cls(tuple(paths), tuple(folder_scene_ids(root, paths)), None)


def folder_scene_ids(root: str, paths: Sequence[str]) -> list[int]:
    """Scene id per photo: its first sub-folder under ``root``, or a scene of its own."""
    names: dict[str, int] = {}
    ids = []
    for i, path in enumerate(paths):
        rel = os.path.relpath(path, root)
        parts = rel.split(os.sep)
        key = parts[0] if len(parts) > 1 else f"\0{i}"
        ids.append(names.setdefault(key, len(names)))
    return ids


# ---------------------------------------------------------------------- mining
def mine_hard_negatives(
    query_descriptors: Tensor,
    pool_descriptors: Tensor,
    query_clusters: Sequence[int] | Tensor | np.ndarray,
    pool_clusters: Sequence[int] | Tensor | np.ndarray,
    num_negatives: int,
    chunk: int = 256,
) -> list[list[int]]:
    """Hard negatives: the most similar pool images outside the query's cluster, one per cluster.

    For each query, pool images are visited by decreasing dot product with the query
    (ties: lower pool index first); an image is taken unless its cluster is the query's
    or a cluster already taken for this query, until ``num_negatives`` are taken.

    Args:
        query_descriptors: L2-normalised global descriptors of the queries.
        pool_descriptors: those of the pool images.
        query_clusters: cluster id of each query.
        pool_clusters: cluster id of each pool image.
        num_negatives: ``K``.
        chunk: queries sorted at once (memory: ``chunk x P``).

    Returns:
        For each query, up to ``K`` positions into the pool.

    Shape:
        - query_descriptors: :math:`(Q, d)`; pool_descriptors: :math:`(P, d)`.
    """
    if query_descriptors.dim() != 2 or pool_descriptors.dim() != 2:
        raise UsageError("descriptors must be (Q, d) and (P, d)")
    if query_descriptors.shape[1] != pool_descriptors.shape[1]:
        raise UsageError(
            f"descriptor sizes differ: {query_descriptors.shape[1]} vs {pool_descriptors.shape[1]}"
        )
    qc = np.asarray(torch.as_tensor(np.asarray(query_clusters)).cpu(), dtype=np.int64)
    pc = np.asarray(torch.as_tensor(np.asarray(pool_clusters)).cpu(), dtype=np.int64)
    if len(qc) != query_descriptors.shape[0] or len(pc) != pool_descriptors.shape[0]:
        raise UsageError("one cluster id per descriptor is needed")
    out: list[list[int]] = []
    if num_negatives <= 0:
        return [[] for _ in range(len(qc))]
    pool = pool_descriptors.float()
    for start in range(0, len(qc), chunk):
        sims = query_descriptors[start:start + chunk].float() @ pool.T  # (c, P)
        order = torch.sort(sims, dim=1, descending=True, stable=True).indices.cpu().numpy()
        for row, q in zip(order, range(start, start + len(order)), strict=True):
            clusters = pc[row]
            keep = clusters != qc[q]
            cand, cand_clusters = row[keep], clusters[keep]
            # first occurrence of each cluster, in similarity order
            _, first = np.unique(cand_clusters, return_index=True)
            first.sort()
            out.append(cand[first[:num_negatives]].tolist())
    return out


def _iterate(fn: Callable[[int], Tensor], items: Sequence[int], num_workers: int) -> Iterator[Tensor]:
    if num_workers <= 0:
        for i in items:
            yield fn(i)
        return
    loader = torch.utils.data.DataLoader(
        _FnDataset(fn, list(items)), batch_size=None, shuffle=False, num_workers=num_workers
    )
    yield from loader


class _FnDataset(torch.utils.data.Dataset):
    def __init__(self, fn: Callable[[int], Tensor], items: list[int]) -> None:
        self.fn, self.items = fn, items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Tensor:
        return self.fn(self.items[i])


@torch.no_grad()
def global_descriptors(
    model,
    load: Callable[[int], Tensor],
    items: Sequence[int],
    scales: Sequence[float] = (1.0,),
    dist=None,
    num_workers: int = 0,
    autocast: Callable | None = None,
) -> Tensor:
    """Global descriptors (:meth:`SuperFeatureModel.forward_global`) of ``items``, one image at a time.

    With a distributed context, each process computes every ``world``-th item and the rows
    are gathered, so every process returns the full matrix (in ``items`` order). One image
    at a time makes each row independent of how the work is shared.

    Shape:
        - Output: :math:`(len(items), d)` float32 on the model's device.
    """
    from contextlib import nullcontext

    rank, world = (dist.rank, dist.world_size) if dist is not None else (0, 1)
    mine = list(items)[rank::world]
    rows = []
    was_training = model.training
    model.eval()
    for img in _iterate(load, mine, num_workers):
        with autocast() if autocast is not None else nullcontext():
            rows.append(model.forward_global(img.unsqueeze(0).to(model.device), scales=scales).float())
    model.train(was_training)
    dim = model.cfg.reduction_dim
    local = torch.cat(rows) if rows else torch.zeros(0, dim, device=model.device)
    if world == 1:
        return local
    parts = dist.all_gather_rows(local)
    out = torch.empty(len(items), local.shape[1], device=local.device, dtype=local.dtype)
    for r, part in enumerate(parts):
        out[r::world] = part
    return out


# ---------------------------------------------------------------------- dataset
class TupleDataset(torch.utils.data.Dataset):
    """Tuples mined anew every epoch from an :class:`ImageDatabase`.

    Call :meth:`mine` at the start of each epoch; then ``dataset[i]`` loads tuple ``i``
    (images downscaled to ``cfg.image_size``, each flipped horizontally with probability
    ``cfg.flip_probability``; synthetic positives drawn from a generator seeded by
    ``(seed, epoch, i)``).

    Args:
        db: the training images.
        cfg: sizes and probabilities (``queries_per_epoch``, ``pool_size``, ``num_negatives``...).
        seed: experiment seed.
    """

    def __init__(self, db: ImageDatabase, cfg: DataConfig | None = None, seed: int = 0) -> None:
        self.db = db
        self.cfg = cfg if cfg is not None else DataConfig()
        self.seed = int(seed)
        self.epoch = -1
        self.specs: list[TupleSpec] = []

    def __len__(self) -> int:
        return len(self.specs)

    def load(self, index: int) -> Tensor:
        """Image ``index`` of the database, RGB in ``[0, 1]``, at most ``image_size`` px."""
        return load_image(self.db.paths[index], self.cfg.image_size)

    def sample(self, epoch: int) -> tuple[list[tuple[int, int]], list[int]]:
        """This epoch's ``(query, positive)`` pairs and pool (deterministic in ``seed, epoch``)."""
        rng = np.random.default_rng(_seed(self.seed, epoch, 1))
        n = len(self.db)
        if self.db.pairs is not None:
            pairs = list(self.db.pairs)
            chosen = rng.permutation(len(pairs))[: self.cfg.queries_per_epoch]
            queries = [pairs[i] for i in chosen]
        else:
            chosen = rng.permutation(n)[: self.cfg.queries_per_epoch]
            queries = [(int(i), int(i)) for i in chosen]
            if self.cfg.scene_positives > 0:  # another real photo of the scene, when there is one
                clusters = np.asarray(self.db.clusters)
                draws = rng.random(len(queries))
                for t, (q, _) in enumerate(queries):
                    others = np.flatnonzero((clusters == clusters[q]) & (np.arange(n) != q))
                    if len(others) and draws[t] < self.cfg.scene_positives:
                        queries[t] = (q, int(others[rng.integers(len(others))]))
        pool = sorted(int(i) for i in rng.permutation(n)[: self.cfg.pool_size])
        return queries, pool

    def mine(self, model, epoch: int, dist=None, autocast: Callable | None = None) -> list[TupleSpec]:
        """Sample queries and pool for ``epoch`` and mine hard negatives with ``model``.

        Sets and returns :attr:`specs`. With ``num_negatives = 0`` no descriptor is computed.
        """
        queries, pool = self.sample(epoch)
        k = self.cfg.num_negatives
        negatives: list[list[int]]
        if k > 0:
            qidx = [q for q, _ in queries]
            items = sorted(set(qidx) | set(pool))
            pos = {i: j for j, i in enumerate(items)}
            desc = global_descriptors(
                model, self.load, items, self.cfg.mining_scales, dist=dist,
                num_workers=self.cfg.num_workers, autocast=autocast,
            )
            clusters = np.asarray(self.db.clusters)
            qd = desc[[pos[q] for q in qidx]]
            pd = desc[[pos[p] for p in pool]]
            found = mine_hard_negatives(qd, pd, clusters[qidx], clusters[pool], k)
            negatives = [[pool[j] for j in row] for row in found]
        else:
            negatives = [[] for _ in queries]
        synthetic = self.db.synthetic_positives
        self.specs = [TupleSpec(q, p, tuple(n), synthetic and q == p) for (q, p), n in zip(queries, negatives, strict=True)]
        self.epoch = epoch
        return self.specs

    def generator(self, index: int) -> torch.Generator:
        """The generator of tuple ``index`` of the current epoch."""
        return torch.Generator().manual_seed(_seed(self.seed, self.epoch, 2, index))

    def __getitem__(self, index: int) -> TrainingTuple:
        if not self.specs:
            raise RuntimeError("no tuples yet: call dataset.mine(model, epoch) first")
        spec = self.specs[index]
        g = self.generator(index)
        query = self.load(spec.query)
        if spec.synthetic:
            positive = synthetic_view(query, self.cfg.views, g).image
        else:
            positive = self.load(spec.positive)
        images = [query, positive] + [self.load(n) for n in spec.negatives]
        flips = torch.rand(len(images), generator=g) < self.cfg.flip_probability
        images = [im.flip(-1) if f else im for im, f in zip(images, flips.tolist(), strict=True)]
        return TrainingTuple(images[0], images[1], tuple(images[2:]), spec)


# ---------------------------------------------------------------------- validation data
class ValidationQuery(NamedTuple):
    """A validation query: database image ``source``, or a synthetic view of it (``view_seed``)."""

    source: int
    view_seed: int | None = None


@dataclass(frozen=True)
class ValidationSet:
    """Queries and a database with known positives, for mAP during training.

    Args:
        db_paths: database images.
        queries: each a database image or a synthetic view of one.
        positives: database indices relevant to each query.
        junk: database indices ignored for each query (e.g. the query image itself).
        image_size: longer side of the loaded images.
        views: parameters of the synthetic query views.
    """

    db_paths: tuple[str, ...]
    queries: tuple[ValidationQuery, ...]
    positives: tuple[tuple[int, ...], ...]
    junk: tuple[tuple[int, ...], ...]
    image_size: int = 1024
    views: ViewConfig = ViewConfig()

    def __post_init__(self) -> None:
        if not (len(self.queries) == len(self.positives) == len(self.junk)):
            raise UsageError("queries, positives and junk must have the same length")

    def load_db(self, j: int) -> Tensor:
        return load_image(self.db_paths[j], self.image_size)

    def load_query(self, i: int) -> Tensor:
        q = self.queries[i]
        img = self.load_db(q.source)
        if q.view_seed is None:
            return img
        return synthetic_view(img, self.views, torch.Generator().manual_seed(q.view_seed)).image

    @classmethod
    def from_views(
        cls, paths: Sequence[str], clusters: Sequence[int], views_per_image: int, cfg: DataConfig, seed: int = 0
    ) -> ValidationSet:
        """Synthetic views of held-out photos as queries; positives: the source photo and
        the other held-out photos of its scene."""
        queries, positives = [], []
        for i in range(len(paths)):
            same = tuple(j for j in range(len(paths)) if clusters[j] == clusters[i])
            for v in range(views_per_image):
                queries.append(ValidationQuery(i, _seed(seed, i, v, 3)))
                positives.append(same)
        return cls(tuple(paths), tuple(queries), tuple(positives), tuple(() for _ in queries), cfg.image_size, cfg.views)

    @classmethod
    def from_database(cls, db: ImageDatabase, image_size: int = 1024, max_queries: int | None = None) -> ValidationSet:
        """Queries are the database's pair queries; positives: the other images of their
        cluster; the query image itself is junk."""
        if db.pairs is None:
            raise UsageError("the database has no query pairs")
        qidx = sorted({q for q, _ in db.pairs})[:max_queries]
        clusters = np.asarray(db.clusters)
        queries, positives, junk = [], [], []
        for q in qidx:
            same = np.flatnonzero(clusters == clusters[q])
            queries.append(ValidationQuery(q))
            positives.append(tuple(int(j) for j in same if j != q))
            junk.append((q,))
        return cls(db.paths, tuple(queries), tuple(positives), tuple(junk), image_size)


def split_folder(root: str | os.PathLike, cfg: DataConfig, seed: int = 0) -> tuple[ImageDatabase, ValidationSet | None]:
    """Training database and validation set of a photo folder.

    ``cfg.val_images`` photos (chosen with ``seed``) are held out; their synthetic views
    (``cfg.val_views`` each) are the validation queries.
    """
    root = os.fspath(root)
    paths = list_images(root)
    if not paths:
        raise UsageError(f"{root}: no images found")
    scenes = folder_scene_ids(root, paths)
    n_val = min(cfg.val_images, len(paths) - 2) if cfg.val_views > 0 else 0
    order = np.random.default_rng(_seed(seed, 4)).permutation(len(paths))
    val = sorted(int(i) for i in order[:max(n_val, 0)])
    train = [i for i in range(len(paths)) if i not in set(val)]
    db = ImageDatabase(tuple(paths[i] for i in train), tuple(scenes[i] for i in train), None)
    if not val:
        return db, None
    vset = ValidationSet.from_views([paths[i] for i in val], [scenes[i] for i in val], cfg.val_views, cfg, seed)
    return db, vset
