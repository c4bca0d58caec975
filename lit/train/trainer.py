"""Training loop of the FIRe recipe (SPEC section 5).

One epoch:

1. **Mining.** ``queries_per_epoch`` queries and a pool of ``pool_size`` images are drawn
   (from ``seed`` and the epoch), global descriptors are computed with the current model
   and every query gets ``K`` hard negatives (:mod:`lit.train.tuples`).
2. **Steps.** Tuples are taken ``tuples_per_step`` at a time. Each tuple goes forward and
   backward on its own (its 2 + K images at every training scale, one image at a time,
   since sizes differ) and its loss is divided by ``tuples_per_step`` before
   ``backward()``, so the accumulated gradient is the gradient of the *mean* tuple loss of
   the step. With several processes, each handles the tuples ``j`` of the step with
   ``j % world_size == rank``, then gradients are summed across processes
   (:mod:`lit.train.ddp`): the same gradient as one process, whatever the process count.
   Then one Adam step (lr ``3e-5``, weight decay ``1e-4``). A last incomplete step is
   dropped.
3. **Schedule.** The learning rate is multiplied by ``lr_gamma`` (0.99).
4. **Validation** (global-descriptor mAP, :mod:`lit.train.validation`), a line in
   ``metrics.jsonl``, the plot ``metrics.png`` and a checkpoint.

Loss of a tuple (images query, positive, negatives_1..K; each at every training scale):

``0.1 · mean_images,scales(attention_decorrelation) + 0.02 · mean_scales(superfeature_loss)``

The super-feature loss (SPEC section 5 says "L2-normalise super-features") is computed, by
default (``loss.space = "reduced"``), on the *reduced* descriptors, i.e. the LIT outputs
passed through the PCA-whitened reduction. SPEC section 1 initialises that layer by
PCA-whitening of training super-features and then *freezes* it: freezing only matters if
the layer is part of the training graph, and the retrieval descriptors that the loss should
shape are the reduced ones. Gradients flow through the frozen layer into LIT and backbone.
``loss.space = "lit"`` uses the ``D``-dimensional LIT outputs instead. The attention loss
uses the attention of the last LIT iteration.

Batch norm stays in eval mode (:meth:`SuperFeatureModel.train`), the reduction layer is
frozen (``requires_grad = False``, excluded from the optimiser), bf16 autocast is used on
GPUs with native bf16 (``precision = "auto"``) and fp32 on CPU and older GPUs.

Checkpoints ``checkpoint_epochNNNN.pt`` hold the model in lit's checkpoint layout
(``format``, ``version``, ``config``, ``state_dict``, ``meta``: readable by
:func:`lit.models.model_from_checkpoint` and :func:`lit.load_model`) plus ``optimizer``,
``scheduler``, ``epoch``, ``rng`` (python, numpy, torch, CUDA states) and
``train_config``. They are written atomically (temporary file, then rename), so a run
killed at any moment (``kill -9``) resumes from the last finished epoch, and gives the
parameters of an uninterrupted run: all sampling is derived from ``(seed, epoch, tuple)``,
never from a global RNG stream.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import re
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .._device import resolve_device
from .._fileio import atomic_path, atomic_write
from ..errors import UsageError
from ..losses import attention_decorrelation_loss, superfeature_loss
from ..models.backbone import freeze_backbone_before
from ..models.checkpoint import (
    LIT_FORMAT,
    LIT_FORMAT_VERSION,
    load_state_dict_checked,
    safe_load,
    save_checkpoint,
)
from ..models.config import ModelConfig
from ..models.lit_init import init_lit_from_tokens
from ..models.model import SuperFeatureModel, has_native_bf16
from .config import LossConfig, TrainConfig, config_to_dict, save_config
from .ddp import DistContext
from .tuples import ImageDatabase, TrainingTuple, TupleDataset, ValidationSet, _seed, split_folder
from .validation import describe_rule_check, match_rule_check, validation_map

CHECKPOINT_PATTERN = re.compile(r"^checkpoint_epoch(\d{4,})\.pt$")
_log = logging.getLogger(__name__)

# keys of the resolved config that may change between a run and its resumption
_RESUMABLE_CHANGES = ("optim.epochs", "data.num_workers", "validate_every", "keep_checkpoints")


# ---------------------------------------------------------------------- small helpers
def autocast_factory(device: torch.device, precision: str = "auto") -> Callable[[], AbstractContextManager]:
    """A callable giving the autocast context for ``precision`` on ``device``.

    ``"auto"``: bf16 on GPUs that compute it natively (compute capability 8.0 or more:
    A100, H100, RTX 30xx and later), none (fp32) elsewhere: on the CPU and on older GPUs
    (V100, T4), where bf16 is emulated and fp16 would need loss scaling; ``"bf16"``: bf16
    autocast on any device (CPU autocast too, e.g. for benchmarks); ``"fp32"``: none.
    """
    if precision not in ("auto", "fp32", "bf16"):
        raise UsageError(f"precision must be 'auto', 'fp32' or 'bf16', got {precision!r}")
    use_bf16 = precision == "bf16" or (precision == "auto" and has_native_bf16(device))
    if not use_bf16:
        return nullcontext
    return lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def _identity(x):
    return x


class TupleLoss(NamedTuple):
    """Loss of one tuple and its parts (already weighted sum in ``loss``).

    Shape:
        - loss: :math:`()` with gradient.
        - attention, superfeature: :math:`()` unweighted parts, detached.
        - matches: number of matched super-features (mean over scales).
    """

    loss: Tensor
    attention: Tensor
    superfeature: Tensor
    matches: float


def tuple_loss(
    model: SuperFeatureModel,
    images: TrainingTuple | Sequence[Tensor],
    loss_cfg: LossConfig | None = None,
    scales: Sequence[float] = (1.0,),
    autocast: Callable[[], AbstractContextManager] = nullcontext,
) -> TupleLoss:
    """FIRe loss of one tuple ``[query, positive, *negatives]`` (see the module docstring).

    Args:
        model: the network (its mode is left as is).
        images: a :class:`TrainingTuple` or a list of RGB images in ``[0, 1]``.
        loss_cfg: weights, margin, ratio, and the space of the super-feature loss
            (default: the FIRe values).
        scales: training scales (images resized like SPEC section 1's multi-scale).
        autocast: context for the network forward (bf16 on CUDA); losses run in fp32.

    Shape:
        - images: ``2 + K`` tensors :math:`(3, H_i, W_i)`.
    """
    loss_cfg = loss_cfg if loss_cfg is not None else LossConfig()
    if isinstance(images, TrainingTuple):
        images = images.images
    if len(images) < 2:
        raise UsageError(f"a tuple needs at least a query and a positive, got {len(images)} images")
    if loss_cfg.space == "reduced" and not model.has_reduction:
        raise UsageError("loss.space='reduced' needs a reduction layer: initialise it first")
    device = model.device
    attention_terms, sf_terms, matches = [], [], 0.0
    for s in scales:
        descs = []
        for img in images:
            x = model.normalize(img.unsqueeze(0).to(device, torch.float32))
            if s != 1.0:
                x = F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False)
            with autocast():
                feats, attn = model.forward_superfeatures(x)
            feats, attn = feats.float(), attn.float()
            attention_terms.append(attention_decorrelation_loss(attn))
            descs.append((model.reduce(feats) if loss_cfg.space == "reduced" else feats)[0])
        negatives = torch.stack(descs[2:]) if len(descs) > 2 else descs[0].new_zeros(0, *descs[0].shape)
        out = superfeature_loss(
            descs[0], descs[1], negatives, margin=loss_cfg.margin, ratio=loss_cfg.ratio, return_matches=True
        )
        sf_terms.append(out.loss)
        matches += out.matches.numel() / len(scales)
    attention = torch.stack(attention_terms).mean()
    superfeature = torch.stack(sf_terms).mean()
    loss = loss_cfg.attention_weight * attention + loss_cfg.superfeature_weight * superfeature
    return TupleLoss(loss, attention.detach(), superfeature.detach(), matches)


def build_model(cfg: TrainConfig) -> SuperFeatureModel:
    """The initial model: ``init.checkpoint`` (with ``model.runtime`` applied) or a new one.

    Raises:
        ValueError: ``model`` and the checkpoint disagree on the architecture.
    """
    if cfg.init.checkpoint:
        from ..hub import load_model

        model = load_model(cfg.init.checkpoint, device="cpu")
        if cfg.model is not None:
            if (cfg.model.backbone, cfg.model.lit) != (model.cfg.backbone, model.cfg.lit):
                raise UsageError(
                    f"model config {cfg.model.backbone}, {cfg.model.lit} does not match the "
                    f"checkpoint {cfg.init.checkpoint} ({model.cfg.backbone}, {model.cfg.lit})"
                )
            red = model.cfg.reduction_dim if model.has_reduction else cfg.model.reduction_dim
            model.cfg = replace(model.cfg, runtime=cfg.model.runtime, reduction_dim=red)
            model.mean.copy_(torch.tensor(cfg.model.runtime.mean).view(1, 3, 1, 1))
            model.std.copy_(torch.tensor(cfg.model.runtime.std).view(1, 3, 1, 1))
        return model
    torch.manual_seed(cfg.seed)
    return SuperFeatureModel(cfg.model or ModelConfig(), pretrained_backbone=cfg.init.pretrained_backbone)


def _own_share(
    model: SuperFeatureModel,
    load: Callable[[int], Tensor],
    indices: Sequence[int],
    scales: Sequence[float],
    dist: DistContext,
    autocast: Callable[[], AbstractContextManager],
    fn: Callable[[Tensor], Tensor],
) -> list[list[Tensor]]:
    """``fn`` of each normalised, rescaled image of this process's share
    (``indices[rank::world_size]``), per image and scale (in eval mode, under ``autocast``,
    without autograd: the results carry no graph, so memory does not grow per image)."""
    model.eval()
    out = []
    with torch.no_grad():
        for i in list(indices)[dist.rank::dist.world_size]:
            x = model.normalize(load(i).unsqueeze(0).to(model.device, torch.float32))
            per_scale = []
            for s in scales:
                xs = x if s == 1.0 else F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False)
                with autocast():
                    per_scale.append(fn(xs))
            out.append(per_scale)
    return out


@torch.no_grad()
def whitening_features(
    model: SuperFeatureModel,
    load: Callable[[int], Tensor],
    indices: Sequence[int],
    scales: Sequence[float] = (1.0,),
    dist: DistContext | None = None,
    autocast: Callable[[], AbstractContextManager] = nullcontext,
) -> Tensor:
    """All ``N`` LIT super-features of the given images at ``scales`` (before reduction).

    Shape:
        - Output: :math:`(len(indices) · len(scales) · N, D)` (same on every process).
    """
    dist = dist or DistContext()
    share = _own_share(model, load, indices, scales, dist, autocast,
                       lambda xs: model.forward_superfeatures(xs)[0][0].float())
    rows = [torch.cat(per_scale) for per_scale in share]
    per = model.cfg.lit.N * len(scales)
    local = torch.stack(rows) if rows else torch.zeros(0, per, model.cfg.lit.dim, device=model.device)
    parts = dist.all_gather_rows(local)
    full = torch.empty(len(indices), per, model.cfg.lit.dim, device=local.device)
    for r, part in enumerate(parts):
        full[r::dist.world_size] = part
    return full.reshape(-1, model.cfg.lit.dim)


@torch.no_grad()
def _freeze_by_prefix(model: torch.nn.Module, prefixes: Sequence[str]) -> None:
    """Stop training the parameters whose name starts with one of ``prefixes``."""
    params = dict(model.named_parameters())
    for prefix in prefixes:
        hit = [name for name in params if name.startswith(prefix)]
        if not hit:
            lit_names = ", ".join(n for n in params if not n.startswith("backbone."))
            raise UsageError(f"optim.frozen: no parameter starts with {prefix!r} (besides the backbone's: {lit_names})")
        for name in hit:
            params[name].requires_grad_(False)


def backbone_tokens(
    model: SuperFeatureModel,
    load: Callable[[int], Tensor],
    indices: Sequence[int],
    scales: Sequence[float] = (1.0,),
    dist: DistContext | None = None,
    autocast: Callable[[], AbstractContextManager] = nullcontext,
) -> Tensor:
    """Every backbone local feature (token) of the given images at ``scales``, on CPU.

    Each process extracts its share of the images; the result is the same on every
    process (images in ``indices`` order, then scales).

    Shape:
        - Output: :math:`(M, C)`, ``M`` the total number of feature-map cells.
    """
    dist = dist or DistContext()
    share = _own_share(model, load, indices, scales, dist, autocast,
                       lambda xs: model.backbone(xs)[0].float().flatten(1).T.cpu())
    if dist.world_size == 1:
        return torch.cat([t for per_scale in share for t in per_scale])
    gathered = [None] * dist.world_size
    torch.distributed.all_gather_object(gathered, share)
    return torch.cat([t for j in range(len(indices)) for t in gathered[j % dist.world_size][j // dist.world_size]])


def build_data(cfg: TrainConfig) -> tuple[TupleDataset, ValidationSet | None]:
    """Training tuples and validation set described by ``cfg.data``."""
    d = cfg.data
    if not d.root:
        raise UsageError("data.root is not set")
    if d.source == "folder":
        db, vset = split_folder(d.root, d, cfg.seed)
        return TupleDataset(db, d, cfg.seed), vset
    db_file = d.db_file
    if not db_file:
        raise UsageError("data.db_file (the cirtorch retrieval-SfM-120k.pkl) is needed for source 'sfm120k'")
    train = ImageDatabase.from_cirtorch(db_file, d.root, "train")
    try:
        val_db = ImageDatabase.from_cirtorch(db_file, d.root, "val")
        vset = ValidationSet.from_database(val_db, d.image_size, d.val_queries)
    except ValueError:
        vset = None
    return TupleDataset(train, d, cfg.seed), vset


def checkpoint_path(out_dir: str | os.PathLike, epoch: int) -> Path:
    return Path(out_dir) / f"checkpoint_epoch{epoch:04d}.pt"


def list_checkpoints(out_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """``(epoch, path)`` of the epoch checkpoints in ``out_dir``, oldest first."""
    out = Path(out_dir)
    if not out.is_dir():
        return []
    found = []
    for p in out.iterdir():
        m = CHECKPOINT_PATTERN.match(p.name)
        if m:
            found.append((int(m.group(1)), p))
    return sorted(found)


def _atomic_torch_save(obj: Any, path: Path) -> None:
    with atomic_write(path, "wb") as f:
        torch.save(obj, f)


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, key, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, key.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        # one state per GPU visible at save time; a resume may see fewer (8 -> 4 GPUs,
        # CUDA_VISIBLE_DEVICES=0) or more: restore those that exist in both
        saved = list(state["cuda"])
        for i in range(min(len(saved), torch.cuda.device_count())):
            torch.cuda.set_rng_state(saved[i], i)


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


# ---------------------------------------------------------------------- trainer
class Trainer:
    """Runs a :class:`TrainConfig` experiment in ``out_dir``.

    Args:
        cfg: the experiment.
        out_dir: results folder (``config.yaml``, ``metrics.jsonl``, ``metrics.png``,
            ``checkpoint_epochNNNN.pt``, ``model.pt``).
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        resume: continue from the latest checkpoint in ``out_dir`` (fresh start if none).
        dataset: tuples to train on (default: built from ``cfg.data``).
        validation: validation set (default: built from ``cfg.data``; ``None`` and
            ``cfg.data`` without a root: no validation).
        dist: process group context (default: from the ``torchrun`` environment).
        log: where progress lines go (default: this module's logger, on the main process).

    Example:
        >>> trainer = Trainer(load_config("configs/own_photos.yaml"), "runs/photos")  # doctest: +SKIP
        >>> history = trainer.fit()  # doctest: +SKIP
    """

    def __init__(
        self,
        cfg: TrainConfig,
        out_dir: str | os.PathLike,
        *,
        device: str | torch.device = "auto",
        resume: bool = False,
        dataset: TupleDataset | None = None,
        validation: ValidationSet | None = None,
        dist: DistContext | None = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.cfg = cfg
        kind = "cuda" if str(device).startswith("cuda") or (str(device) == "auto" and torch.cuda.is_available()) else "cpu"
        self.dist = dist or DistContext.from_env(kind)
        self.device = resolve_device(device, local_rank=self.dist.local_rank)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self.out_dir = Path(out_dir)
        if self.dist.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        self.log = log if log is not None else (_log.info if self.dist.is_main else (lambda _msg: None))
        self.autocast = autocast_factory(self.device, cfg.precision)
        if dataset is None:
            dataset, built_val = build_data(cfg)
            validation = validation if validation is not None else built_val
        self.dataset = dataset
        self.validation = validation
        self.history: list[dict[str, Any]] = []
        self.epoch = 0  # completed epochs

        latest = self._latest_checkpoint() if resume else None
        if latest is not None:
            ckpt = safe_load(latest)
            self._check_resumable(ckpt)
            self.model = SuperFeatureModel(ModelConfig.from_dict(ckpt["config"]))
            load_state_dict_checked(self.model, ckpt["state_dict"], source=str(latest))
            self.model.to(self.device)
        else:
            ckpt = None
            self.model = build_model(cfg).to(self.device)
            self._init_lit()
            self._init_reduction()
            self.dist.broadcast_module(self.model)
        if self.model.dim_reduction is not None:
            self.model.dim_reduction.requires_grad_(False)
        o = cfg.optim
        if o.freeze_backbone:
            self.model.backbone.requires_grad_(False)
        elif o.backbone_trainable_from is not None:
            freeze_backbone_before(self.model.backbone, o.backbone_trainable_from)
        _freeze_by_prefix(self.model, o.frozen)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        if not self.params:
            raise UsageError("nothing left to train: every parameter is frozen (optim.frozen, freeze_backbone)")
        backbone_ids = {id(p) for p in self.model.backbone.parameters()}
        groups = [{"params": [p for p in self.params if id(p) not in backbone_ids]}]
        trained_backbone = [p for p in self.params if id(p) in backbone_ids]
        if trained_backbone:
            groups.append({"params": trained_backbone, "lr": o.backbone_lr or o.lr})
        self.optimizer = torch.optim.Adam(groups, lr=o.lr, weight_decay=o.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.ExponentialLR(self.optimizer, gamma=o.lr_gamma)
        if ckpt is not None:
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.scheduler.load_state_dict(ckpt["scheduler"])
            _set_rng_state(ckpt["rng"])
            self.epoch = int(ckpt["epoch"])
            self.history = self._read_metrics(upto=self.epoch)
            if self.dist.is_main:
                self._write_metrics()
            self.log(f"resumed from {latest} (epoch {self.epoch})")
        if self.dist.is_main:
            save_config(cfg, self.out_dir / "config.yaml")
        self.dist.barrier()

    # ------------------------------------------------------------------ setup
    @property
    def training_scales(self) -> tuple[float, ...]:
        return tuple(self.model.cfg.runtime.training_scales)

    def _whitening_indices(self) -> list[int]:
        n = min(self.cfg.init.whitening_images, len(self.dataset.db))
        rng = np.random.default_rng(_seed(self.cfg.seed, 5))
        return sorted(int(i) for i in rng.permutation(len(self.dataset.db))[:n])

    def _init_lit(self) -> None:
        if self.cfg.init.lit != "kmeans":
            return
        indices = self._whitening_indices()
        t0 = time.time()
        tokens = backbone_tokens(self.model, self.dataset.load, indices, self.training_scales, self.dist, self.autocast)
        init = self.cfg.init
        init_lit_from_tokens(self.model.lit, tokens, sharpness=init.lit_sharpness, seed=_seed(self.cfg.seed, 6),
                             background=init.lit_background, background_fraction=init.lit_background_fraction)
        what = f"k-means + background template {init.lit_background:g}" if init.lit_background else "k-means"
        self.log(f"LIT initialised from {tokens.shape[0]} local features of {len(indices)} images "
                 f"({what}, {time.time() - t0:.1f}s)")

    def _init_reduction(self) -> None:
        mode = self.cfg.init.whitening
        trained_reduction = bool(self.cfg.init.checkpoint) and self.model.has_reduction
        if mode == "never" or (mode == "auto" and trained_reduction):
            if not self.model.has_reduction:
                raise UsageError("init.whitening='never' but the model has no reduction layer")
            return
        indices = self._whitening_indices()
        n = len(indices)
        t0 = time.time()
        feats = whitening_features(self.model, self.dataset.load, indices, self.training_scales, self.dist, self.autocast)
        dim = self.model.cfg.reduction_dim or min(128, self.model.cfg.lit.dim)
        if feats.shape[0] <= dim:
            raise UsageError(
                f"PCA-whitening to {dim} dimensions needs more than {dim} super-features; "
                f"{n} images give {feats.shape[0]}: raise init.whitening_images"
            )
        self.model.init_reduction(feats, shrinkage=self.cfg.init.shrinkage, dim=dim)
        self.log(f"reduction initialised by PCA-whitening of {feats.shape[0]} super-features "
                 f"from {n} images ({time.time() - t0:.1f}s)")

    def _latest_checkpoint(self) -> Path | None:
        found = list_checkpoints(self.out_dir)
        return found[-1][1] if found else None

    def _check_resumable(self, ckpt: dict[str, Any]) -> None:
        old = _flatten(ckpt.get("train_config", {}))
        new = _flatten(config_to_dict(self.cfg))
        diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k) and k not in _RESUMABLE_CHANGES
                      and not k.startswith("model.match."))  # the match rule (model config since format 2)
        if diff:
            raise UsageError(
                f"cannot resume in {self.out_dir}: the configuration differs from the checkpoint's "
                f"in {', '.join(diff)} (use another output folder, or the same configuration)"
            )

    # ------------------------------------------------------------------ training
    def fit(self, epochs: int | None = None) -> list[dict[str, Any]]:
        """Train until ``epochs`` epochs are done (default ``cfg.optim.epochs``).

        Before the first epoch of a fresh run the initial model is validated (``epoch`` 0
        in the metrics). Returns the metrics history.
        """
        epochs = self.cfg.optim.epochs if epochs is None else int(epochs)
        before = None
        if self.epoch == 0 and not self.history and self._should_validate(0):
            record = {"epoch": 0, "val_map": self.validate()}
            self._record(record)
            before = self._check_match_rule() if self.epoch < epochs else None
        while self.epoch < epochs:
            self.train_epoch()
        meta = {"epoch": self.epoch}
        after = self._check_match_rule() if before is not None or self._should_validate(self.epoch) else None
        if after is not None:
            meta["match_rule_check"] = {"before": before, "after": after}
            self.log(describe_rule_check(after, before))
            if self.dist.is_main and before is not None and (
                    after["same_place_matched"] < before["same_place_matched"]
                    or after["different_place_matched"] > before["different_place_matched"]):
                _log.warning("the match rule kept from the initial model fits the trained model worse than it fitted "
                             "the initial one (above): recalibrate it (weights/README.md) or pass --threshold / --margin "
                             "to `lit match`")
        if self.dist.is_main:
            save_checkpoint(self.model, self.out_dir / "model.pt", meta=meta)
        self.dist.barrier()
        return self.history

    def _check_match_rule(self) -> dict | None:
        """:func:`match_rule_check` of the model on the validation photos (main process)."""
        if self.validation is None or not self.dist.is_main:
            return None
        return match_rule_check(self.model, self.validation)

    def _should_validate(self, epoch: int) -> bool:
        every = self.cfg.validate_every
        return self.validation is not None and every > 0 and epoch % every == 0

    def _tuple_indices(self, steps: int) -> list[int]:
        per_step = self.cfg.optim.tuples_per_step
        mine = [j for j in range(per_step) if j % self.dist.world_size == self.dist.rank]
        return [s * per_step + j for s in range(steps) for j in mine]

    def train_epoch(self) -> dict[str, Any]:
        """Mine, train one epoch, step the schedule, validate, record and checkpoint."""
        epoch = self.epoch
        t0 = time.time()
        self.dataset.mine(self.model, epoch, dist=self.dist, autocast=self.autocast)
        t_mine = time.time() - t0
        per_step = self.cfg.optim.tuples_per_step
        steps = len(self.dataset) // per_step
        if steps == 0:
            raise UsageError(f"{len(self.dataset)} tuples per epoch is less than tuples_per_step={per_step}")
        indices = self._tuple_indices(steps)
        local_per_step = len(indices) // steps
        loader = torch.utils.data.DataLoader(
            torch.utils.data.Subset(self.dataset, indices), batch_size=None, shuffle=False,
            num_workers=self.cfg.data.num_workers, collate_fn=_identity,
        )
        lr = self.optimizer.param_groups[0]["lr"]
        # loss, attention, superfeature summed on the device (read once per log line, no
        # per-step host sync); matches and tuples are host numbers already
        losses = torch.zeros(3, dtype=torch.float64, device=self.device)
        matches, tuples = 0.0, 0
        self.model.train()
        it = iter(loader)
        log_every = max(1, steps // 10)
        for step in range(steps):
            for _ in range(local_per_step):
                tup = next(it)
                out = tuple_loss(self.model, tup, self.cfg.loss, self.training_scales, self.autocast)
                (out.loss / per_step).backward()
                losses += torch.stack([out.loss.detach(), out.attention, out.superfeature]).double()
                matches += out.matches
                tuples += 1
            self.dist.all_reduce_gradients(self.params)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            if (step + 1) % log_every == 0 and self.dist.is_main:
                self.log(f"epoch {epoch + 1} step {step + 1}/{steps} loss {float(losses[0]) / max(tuples, 1):.5f}")
        self.scheduler.step()
        sums = torch.cat([losses, torch.tensor([matches, tuples], dtype=torch.float64, device=self.device)])
        sums = self.dist.all_reduce_sum(sums).cpu()
        n = float(sums[4])
        self.epoch = epoch + 1
        record: dict[str, Any] = {
            "epoch": self.epoch,
            "loss": float(sums[0] / n),
            "attention_loss": float(sums[1] / n),
            "superfeature_loss": float(sums[2] / n),
            "matches": float(sums[3] / n),
            "tuples": int(n),
            "steps": steps,
            "lr": lr,
            "mining_s": round(t_mine, 3),
            "epoch_s": round(time.time() - t0, 3),
        }
        if self._should_validate(self.epoch):
            record["val_map"] = self.validate()
        self._record(record)
        self.log(
            f"epoch {self.epoch}: loss {record['loss']:.5f} (attention {record['attention_loss']:.4f}, "
            f"super-features {record['superfeature_loss']:.4f}, {record['matches']:.1f} matches)"
            + (f", val mAP {100 * record['val_map']:.2f}" if "val_map" in record else "")
            + f", {record['epoch_s']:.1f}s"
        )
        self.save()
        return record

    @torch.no_grad()
    def validate(self) -> float | None:
        """Global-descriptor mAP on the validation set (images shared among processes)."""
        if self.validation is None:
            return None
        was_training = self.model.training
        result = validation_map(
            self.model, self.validation, self.cfg.data.mining_scales,
            num_workers=self.cfg.data.num_workers, autocast=self.autocast, dist=self.dist,
        )
        self.model.train(was_training)
        return result

    # ------------------------------------------------------------------ outputs
    def checkpoint_state(self) -> dict[str, Any]:
        """Everything needed to resume, in lit's checkpoint layout."""
        sd = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        return {
            "format": LIT_FORMAT,
            "version": LIT_FORMAT_VERSION,
            "config": self.model.cfg.to_dict(),
            "state_dict": sd,
            "meta": {"epoch": self.epoch, "trainer": "lit.train"},
            "epoch": self.epoch,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": _rng_state(),
            "train_config": config_to_dict(self.cfg),
        }

    def save(self) -> Path | None:
        """Write this epoch's checkpoint (main process) and drop old ones."""
        path = None
        if self.dist.is_main:
            path = checkpoint_path(self.out_dir, self.epoch)
            _atomic_torch_save(self.checkpoint_state(), path)
            keep = max(1, self.cfg.keep_checkpoints)
            for _, old in list_checkpoints(self.out_dir)[:-keep]:
                old.unlink(missing_ok=True)
        self.dist.barrier()
        return path

    def _record(self, record: dict[str, Any]) -> None:
        self.history.append(record)
        if self.dist.is_main:
            with open(self.out_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
            plot_metrics(self.history, self.out_dir / "metrics.png")

    def _read_metrics(self, upto: int) -> list[dict[str, Any]]:
        path = self.out_dir / "metrics.jsonl"
        if not path.is_file():
            return []
        out = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill
            if int(rec.get("epoch", -1)) <= upto:
                out.append(rec)
        return out

    def _write_metrics(self) -> None:
        path = self.out_dir / "metrics.jsonl"
        with atomic_write(path, "w", encoding="utf-8") as f:
            f.write("".join(json.dumps(r) + "\n" for r in self.history))


def plot_metrics(history: Sequence[dict[str, Any]], path: str | os.PathLike):
    """Loss and validation mAP per epoch, saved to ``path``; returns the ``Figure``."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.5), layout="constrained")
    ax_loss, ax_map = fig.subplots(1, 2)
    train = [r for r in history if "loss" in r]
    if train:
        e = [r["epoch"] for r in train]
        ax_loss.plot(e, [r["loss"] for r in train], "o-", label="total")
        ax_loss.plot(e, [0.1 * r["attention_loss"] for r in train], ".--", label="0.1 x attention")
        ax_loss.plot(e, [0.02 * r["superfeature_loss"] for r in train], ".--", label="0.02 x super-feature")
        ax_loss.legend(fontsize=8)
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("training loss")
    val = [r for r in history if r.get("val_map") is not None and not math.isnan(r["val_map"])]
    if val:
        ax_map.plot([r["epoch"] for r in val], [100 * r["val_map"] for r in val], "o-", color="C3", clip_on=False)
    ax_map.set_xlabel("epoch")
    ax_map.set_ylabel("validation mAP (%)")
    ax_map.set_ylim(0, 100)  # mAP is a percentage: no 104 %, no 0.96-1.04 band for one point
    from matplotlib.ticker import MaxNLocator

    epochs = [r["epoch"] for r in history if "epoch" in r]
    for ax in (ax_loss, ax_map):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
        if epochs:
            ax.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)
    if train:
        top = max(max(r["loss"] for r in train), 0.0)
        ax_loss.set_ylim(0, top * 1.1 if top > 0 else 1.0)  # losses are >= 0
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format=os.path.splitext(os.fspath(path))[1][1:].lower() or "png")
    return fig
