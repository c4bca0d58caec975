"""The text head trained by lit: MiniLM sentence embedding -> the frozen image tower's space.

Training follows the cold-start recipe (frozen image tower, trained query tower): positive
pairs (a text, the prototype of the class it names) and random negative classes, with an
InfoNCE loss over cosine similarities. The class prototypes are the image tower's ImageNet
classifier rows, which live in the same space as the photos' pooled embeddings.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class HeadConfig:
    """Text head and its training recipe.

    Args:
        kind: ``"keyed"``: class logits from a learned metric between the text and the sentence
            embeddings of the class names (so it reaches classes it was
            never trained on); ``"linear"``: one linear map into the pooled image space.
        in_dim: sentence embedding width (MiniLM: 384).
        out_dim: image tower width (EfficientNet-Lite: 1280).
        hidden: width of a hidden ReLU layer; 0 for a linear head.
        temperature: initial temperature of the cosine similarities (learned).
        negatives: random negative classes per step (shared by the batch); 0 or less: every
            training class.
        epochs, batch_size, lr, weight_decay: AdamW training.
        seed: initialisation, batches and negatives.
        key_metric: ``keyed`` only: also learn a map of the class keys, ``(I + N) k_c`` (zero
            at start), besides the one of the query.
        free_weight: ``keyed`` only: weight ``w`` of the training-free (ConSE-style) map in the
            head's class distribution, ``p ∝ p_trained^(1 - w) p_free^w`` (a product of experts;
            0: the trained map alone). Applied at inference only (:meth:`TextHead.logits`),
            training fits the trained map (:meth:`TextHead.trained_logits`).
        free_temperature: temperature of the training-free map's cosine similarities.
        free_min_tokens: the mixture applies only to queries of at least this many WordPiece
            tokens (special tokens not counted; 0: to every query): the trained map was fitted
            mostly to short names, the training-free map is the better expert on long
            definitional texts.
    """

    kind: str = "keyed"
    in_dim: int = 384
    out_dim: int = 1280
    hidden: int = 0
    temperature: float = 0.05
    negatives: int = 255
    epochs: int = 60
    batch_size: int = 256
    lr: float = 3e-3
    weight_decay: float = 1e-4
    seed: int = 0
    key_metric: bool = False
    free_weight: float = 0.0
    free_temperature: float = 0.05
    free_min_tokens: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


class TextHead(nn.Module):
    """Text head: sentence embeddings -> class logits, i.e. a point of the class-posterior space.

    ``keyed``: logits ``cos((I + M) x, k_c) / t`` over the classes, with fixed class keys
    ``k_c`` (sentence embeddings of the class names) and a learned metric ``M`` (zero at
    start) and temperature ``t``: before training it is the training-free ConSE-style map,
    and it reaches classes it was never trained on through their keys.
    ``linear``: ``normalize(W x + c)`` (an MLP with ``hidden``) in the image tower's pooled
    space, logits ``cos(., p_c) / t`` against the tower's class prototypes ``p_c``.

    Args:
        cfg: the head's shape.
        keys: class keys ``(C, D_in)`` (``keyed``).
        prototypes: class prototypes ``(C, D_out)`` (``linear``).

    Shape:
        - input: :math:`(B, D_{in})`.
        - :meth:`logits`: :math:`(B, C)`; :meth:`class_weights`: :math:`(B, C)`, rows sum to 1.
    """

    def __init__(self, cfg: HeadConfig, keys: torch.Tensor | None = None, prototypes: torch.Tensor | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        if cfg.kind == "keyed":
            if keys is None or keys.ndim != 2 or keys.shape[1] != cfg.in_dim:
                raise ValueError(f"a keyed text head needs class keys (C, {cfg.in_dim}), got "
                                 f"{None if keys is None else tuple(keys.shape)}")
            self.register_buffer("keys", F.normalize(keys.float(), dim=-1))
            self.metric = nn.Linear(cfg.in_dim, cfg.in_dim, bias=False)
            nn.init.zeros_(self.metric.weight)
            if cfg.key_metric:
                self.key_map = nn.Linear(cfg.in_dim, cfg.in_dim, bias=False)
                nn.init.zeros_(self.key_map.weight)
        elif cfg.kind == "linear":
            if prototypes is None or prototypes.ndim != 2 or prototypes.shape[1] != cfg.out_dim:
                raise ValueError(f"a linear text head needs class prototypes (C, {cfg.out_dim})")
            self.register_buffer("prototypes", F.normalize(prototypes.float(), dim=-1))
            if cfg.hidden > 0:
                self.net = nn.Sequential(nn.Linear(cfg.in_dim, cfg.hidden), nn.ReLU(), nn.Linear(cfg.hidden, cfg.out_dim))
            else:
                self.net = nn.Sequential(nn.Linear(cfg.in_dim, cfg.out_dim))
        else:
            raise ValueError(f"unknown text head kind {cfg.kind!r} (keyed or linear)")
        if not 0.0 <= cfg.free_weight <= 1.0:
            raise ValueError(f"free_weight must lie in [0, 1], got {cfg.free_weight}")
        if cfg.free_weight > 0 and cfg.kind != "keyed":
            raise ValueError("free_weight (mixing in the training-free map) needs a keyed head (its class keys)")
        self.log_temperature = nn.Parameter(torch.tensor(float(cfg.temperature)).log())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Unit vectors: the query's side of the joint space before the class map."""
        if self.cfg.kind == "keyed":
            return F.normalize(x + self.metric(x), dim=-1)
        return F.normalize(self.net(x), dim=-1)

    def table(self, columns: torch.Tensor | None = None) -> torch.Tensor:
        """The class side: unit class keys (``keyed``, mapped when ``key_metric``) or prototypes, ``(C, D)``.

        ``columns``: only these classes (``(K, D)``).
        """
        table = self.keys if self.cfg.kind == "keyed" else self.prototypes
        table = table if columns is None else table[columns]
        if self.cfg.kind == "keyed" and self.cfg.key_metric:
            return F.normalize(table + self.key_map(table), dim=-1)
        return table

    def trained_logits(self, x: torch.Tensor, columns: torch.Tensor | None = None) -> torch.Tensor:
        """Logits of the trained map over all classes, ``(B, C)``, or over ``columns`` only, ``(B, K)``."""
        table = self.table(columns)
        return self(x) @ table.T / self.log_temperature.exp()

    def free_logits(self, x: torch.Tensor, columns: torch.Tensor | None = None) -> torch.Tensor:
        """Logits of the training-free map: ``cos(x, k_c) / free_temperature`` with the unmapped class keys."""
        keys = self.keys if columns is None else self.keys[columns]
        return F.normalize(x, dim=-1) @ keys.T / self.cfg.free_temperature

    def logits(self, x: torch.Tensor, columns: torch.Tensor | None = None,
               tokens: torch.Tensor | None = None) -> torch.Tensor:
        """The head's class logits, ``(B, C)`` (or ``(B, K)`` over ``columns``).

        With ``free_weight`` ``w > 0``: ``(1 - w) log_softmax(trained) + w log_softmax(free)``
        (log-probabilities of the product of experts, up to a per-row constant) for the
        queries with at least ``free_min_tokens`` tokens, :meth:`trained_logits` for the others.

        Args:
            tokens: WordPiece tokens of each query (special tokens not counted), ``(B,)``;
                needed when ``free_min_tokens > 0``.
        """
        w, n0 = self.cfg.free_weight, self.cfg.free_min_tokens
        if w == 0:
            return self.trained_logits(x, columns)
        if n0 > 0 and tokens is None:
            raise ValueError(f"this text head mixes in the training-free map for queries of >= {n0} tokens: "
                             "give the queries' token counts (tokens=)")
        mixed = (1 - w) * self.trained_logits(x, columns).log_softmax(-1) + w * self.free_logits(x, columns).log_softmax(-1)
        if n0 == 0:
            return mixed
        long = torch.as_tensor(tokens, device=x.device).reshape(-1, 1) >= n0
        return torch.where(long, mixed, self.trained_logits(x, columns))

    def class_weights(self, x: torch.Tensor, tokens: torch.Tensor | None = None) -> torch.Tensor:
        """Class distribution of each query, ``(B, C)`` (``tokens``: see :meth:`logits`)."""
        return torch.softmax(self.logits(x, tokens=tokens), dim=-1)


def info_nce_loss(logits: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
    """InfoNCE of each query against its positive class and random negative classes.

    Args:
        logits: query-class logits (similarity / temperature).
        positives: the positive class of each query.
        negatives: negative classes shared by the batch (one equal to a query's positive is
            ignored for that query).

    Shape:
        - logits: :math:`(B, C)`; positives: :math:`(B,)`; negatives: :math:`(K,)`; output: scalar.
    """
    pos = logits.gather(1, positives[:, None])
    neg = logits[:, negatives].masked_fill(negatives[None] == positives[:, None], float("-inf"))
    cat = torch.cat([pos, neg], dim=1)
    return F.cross_entropy(cat, torch.zeros(len(logits), dtype=torch.long, device=logits.device))


def soft_info_nce_loss(logits: torch.Tensor, targets: torch.Tensor, candidates: torch.Tensor,
                       weights: torch.Tensor | None = None) -> torch.Tensor:
    """InfoNCE with soft positives: cross-entropy of the softmax over candidate classes against targets.

    Each query's target distribution (its row of ``targets``, renormalised over ``candidates``)
    is the positive side; the other candidate classes are its negatives. With a one-hot target
    and candidates = positive + negatives this is :func:`info_nce_loss`.

    Args:
        logits: query-class logits.
        targets: non-negative target mass per class (rows need mass on ``candidates``).
        candidates: the classes of the softmax.
        weights: per-query loss weight (``None``: 1); the loss is the weighted mean.

    Shape:
        - logits, targets: :math:`(B, C)`; candidates: :math:`(K,)`; weights: :math:`(B,)`;
          output: scalar.
    """
    t = targets[:, candidates]
    mass = t.sum(1, keepdim=True)
    if bool((mass <= 0).any()):
        raise ValueError("a query has no target mass on the candidate classes")
    per = -(t / mass * logits[:, candidates].log_softmax(1)).sum(1)
    if weights is None:
        return per.mean()
    return (per * weights).sum() / weights.sum()


def train_head(text_emb: torch.Tensor, labels: torch.Tensor, prototypes: torch.Tensor, classes: torch.Tensor,
               cfg: HeadConfig = HeadConfig(), eval_fn=None, keys: torch.Tensor | None = None,
               weights: torch.Tensor | None = None) -> tuple[TextHead, list[dict]]:
    """Train a :class:`TextHead` on (text, class) positive pairs with random negative classes.

    Args:
        text_emb: sentence embeddings of the training texts.
        labels: class of each text (indices into the classes), or soft targets ``(N, C)``, dense
            or sparse (e.g. a 21k synset's 1k classes, :mod:`lit.text.hierarchy`): then each step's
            softmax runs over the batch's target classes and the random negatives
            (:func:`soft_info_nce_loss`).
        prototypes: class prototypes in the image tower's pooled space (``linear`` head).
        classes: the classes negatives are drawn from (the training classes).
        cfg: head and recipe.
        eval_fn: optional ``f(head) -> dict`` called after each epoch (e.g. held-out R@1).
        keys: class keys for a ``keyed`` head (sentence embeddings of the class names, every
            class of ``prototypes``).
        weights: per-text loss weight (``None``: 1; given with hard labels, they become one-hot targets).

    Shape:
        - text_emb: :math:`(N, D_{in})`; labels: :math:`(N,)` or :math:`(N, C)`; prototypes: :math:`(C, D_{out})`;
          classes: :math:`(C_{train},)`.

    Returns:
        The trained head (eval mode) and one record per epoch (``epoch``, ``loss`` and eval_fn's keys).
    """
    if len(text_emb) != len(labels):
        raise ValueError(f"{len(text_emb)} text embeddings but {len(labels)} labels")
    dev = text_emb.device
    gen = torch.Generator(device="cpu").manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    head = TextHead(cfg, keys, prototypes).to(dev)
    classes = classes.to(dev)
    labels = labels.to(dev)
    if weights is not None and not labels.is_floating_point():
        n_cls = len(keys) if keys is not None else len(prototypes)
        labels = torch.sparse_coo_tensor(torch.stack([torch.arange(len(labels), device=dev), labels]),
                                         torch.ones(len(labels), device=dev), (len(labels), n_cls))
    soft = labels.is_floating_point()
    if soft:
        labels = labels.coalesce() if labels.is_sparse else labels.to_sparse()
        on = torch.zeros(labels.shape[1], dtype=torch.bool, device=dev)
        on[classes] = True
        idx, val = labels.indices(), labels.values()
        mass = torch.zeros(len(labels), device=dev).index_add_(0, idx[0], val * on[idx[1]])
        if bool((mass <= 0).any()):
            raise ValueError("a soft target has no mass on the training classes")
    weights = None if weights is None else weights.to(dev, torch.float32)
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = cfg.epochs * max(1, -(-len(labels) // cfg.batch_size))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=steps, pct_start=0.1)
    k = len(classes) if cfg.negatives <= 0 else min(cfg.negatives, len(classes))
    history = []
    for epoch in range(cfg.epochs):
        head.train()
        order = torch.randperm(len(labels), generator=gen).to(dev)
        total, count = 0.0, 0
        for s in range(0, len(order), cfg.batch_size):
            idx = order[s:s + cfg.batch_size]
            neg = classes if k == len(classes) else classes[torch.randperm(len(classes), generator=gen)[:k].to(dev)]
            if soft:
                t = labels.index_select(0, idx).to_dense()
                cand = torch.unique(torch.cat([classes[t[:, classes].sum(0) > 0], neg]))
                loss = soft_info_nce_loss(head.trained_logits(text_emb[idx], cand), t[:, cand],
                                          torch.arange(len(cand), device=dev), None if weights is None else weights[idx])
            else:
                loss = info_nce_loss(head.trained_logits(text_emb[idx]), labels[idx], neg)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
            count += len(idx)
        head.eval()
        rec = {"epoch": epoch + 1, "loss": total / count}
        if eval_fn is not None:
            with torch.no_grad():
                rec.update(eval_fn(head))
        history.append(rec)
    return head.eval(), history


def recall_at_k(scores: torch.Tensor, targets: torch.Tensor, ks=(1, 5)) -> dict[str, float]:
    """Share of rows whose target column is among the ``k`` highest scores.

    Shape:
        - scores: :math:`(B, C)`; targets: :math:`(B,)`.
    """
    rank = (scores > scores.gather(1, targets[:, None])).sum(1)
    return {f"r@{k}": float((rank < k).float().mean()) for k in ks}
