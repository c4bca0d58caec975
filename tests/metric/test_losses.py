"""The loss lit builds for each --loss / --mining (pytorch-metric-learning losses and miners)
against naive loops over every pair and triplet of small 2-D embeddings."""

from __future__ import annotations

import math
from itertools import product

import pytest
import torch
import torch.nn.functional as F

from lit.metric import DEFAULT_MARGINS, TrainConfig, build_loss, metric_loss

F64 = torch.float64


def circle_batch(classes: int = 4, per_class: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """2-D embeddings at random angles around class angles (not unit length: the loss
    normalises), labels grouped by class as a P x K batch."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(classes).repeat_interleave(per_class)
    angles = 2 * math.pi * torch.rand(classes, generator=g, dtype=F64)[labels]
    angles = angles + 0.8 * torch.randn(len(labels), generator=g, dtype=F64)
    radius = 0.5 + torch.rand(len(labels), generator=g, dtype=F64)
    return radius[:, None] * torch.stack([angles.cos(), angles.sin()], dim=1), labels


def distances(x: torch.Tensor) -> list[list[float]]:
    u = [(float(a) / math.hypot(a, b), float(b) / math.hypot(a, b)) for a, b in x.tolist()]
    return [[math.dist(p, q) for q in u] for p in u]


def triplets(labels: torch.Tensor):
    y = labels.tolist()
    for a, p, n in product(range(len(y)), repeat=3):
        if a != p and y[a] == y[p] and y[n] != y[a]:
            yield a, p, n


def mean_of_nonzero(values: list[float]) -> float:
    nonzero = [v for v in values if v > 0]
    return sum(nonzero) / len(nonzero) if nonzero else 0.0


def naive_semihard(x, labels, m):
    d = distances(x)
    return mean_of_nonzero([d[a][p] - d[a][n] + m for a, p, n in triplets(labels) if 0 < d[a][n] - d[a][p] <= m])


def naive_batch_hard(x, labels, m):
    d, y = distances(x), labels.tolist()
    terms = []
    for a in range(len(y)):
        pos = [j for j in range(len(y)) if j != a and y[j] == y[a]]
        neg = [j for j in range(len(y)) if y[j] != y[a]]
        if pos and neg:
            terms.append(max(0.0, max(d[a][j] for j in pos) - min(d[a][j] for j in neg) + m))
    return sum(terms) / len(terms) if terms else 0.0


def naive_all(x, labels, m):
    d = distances(x)
    terms = [max(0.0, d[a][p] - d[a][n] + m) for a, p, n in triplets(labels)]
    return sum(terms) / len(terms)


def naive_contrastive(x, labels, m):
    d, y = distances(x), labels.tolist()
    pairs = [(i, j) for i in range(len(y)) for j in range(len(y)) if i != j]
    pos = mean_of_nonzero([d[i][j] for i, j in pairs if y[i] == y[j]])
    neg = mean_of_nonzero([m - d[i][j] for i, j in pairs if y[i] != y[j]])
    return pos + neg


def naive_margin(x, mined, alpha, beta):
    d = distances(x)
    pos = [max(0.0, alpha + d[a][p] - beta) for a, p, _ in mined]
    neg = [max(0.0, alpha + beta - d[a][n]) for a, _, n in mined]
    count = sum(v > 0 for v in pos) + sum(v > 0 for v in neg)
    return (sum(pos) + sum(neg)) / count if count else 0.0


NAIVE = {"semihard": naive_semihard, "batch_hard": naive_batch_hard, "all": naive_all}


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("mining", ["semihard", "batch_hard", "all"])
@pytest.mark.parametrize("margin", [None, 0.3])
def test_triplet_loss_matches_naive_triplet_loop(mining, margin, seed):
    x, labels = circle_batch(seed=seed)
    loss = build_loss(TrainConfig(loss="triplet", mining=mining, margin=margin))(x, labels)
    m = DEFAULT_MARGINS["triplet"] if margin is None else margin
    assert loss.item() == pytest.approx(NAIVE[mining](x, labels, m), abs=1e-12)


def test_semihard_batches_of_the_test_above_have_semihard_triplets():
    # guard: the semi-hard band is not empty in the batches the naive comparison uses
    assert sum(naive_semihard(*circle_batch(seed=s), 0.1) > 0 for s in range(6)) >= 4


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("margin", [None, 1.0])
def test_contrastive_loss_matches_naive_pair_loop(margin, seed):
    x, labels = circle_batch(seed=seed)
    loss = build_loss(TrainConfig(loss="contrastive", margin=margin))(x, labels)
    m = DEFAULT_MARGINS["contrastive"] if margin is None else margin
    assert loss.item() == pytest.approx(naive_contrastive(x, labels, m), abs=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_margin_loss_matches_naive_loop_over_the_sampled_triplets(seed):
    x, labels = circle_batch(seed=seed)
    loss_fn = build_loss(TrainConfig(loss="margin", margin=0.3, beta=1.1))
    torch.manual_seed(seed)
    loss = loss_fn(x, labels)
    torch.manual_seed(seed)  # the same draws again, from the miner alone
    mined = list(zip(*(t.tolist() for t in loss_fn.miner(x.detach().double(), labels)), strict=True))
    assert mined and all(labels[a] == labels[p] != labels[n] and a != p for a, p, n in mined)
    assert loss.item() == pytest.approx(naive_margin(x, mined, 0.3, 1.1), abs=1e-6)  # beta is float32


def test_margin_loss_learns_its_boundary():
    loss_fn = metric_loss("margin", beta=1.2)
    (beta,) = list(loss_fn.parameters())
    assert beta is loss_fn.beta and beta.item() == pytest.approx(1.2)
    x, labels = circle_batch(seed=1)
    torch.manual_seed(0)
    loss_fn(x.requires_grad_(), labels).backward()
    assert beta.grad is not None and beta.grad.abs().item() > 0 and x.grad.abs().sum() > 0
    assert metric_loss("triplet").beta is None


def test_margin_miner_samples_for_every_anchor_in_high_dimensions():
    # one close pair of classes among far ones, 512-d: in float32, PML's sampling weights of
    # the anchors far from every negative underflow (they got no triplet); lit mines in float64
    g = torch.Generator().manual_seed(1)
    classes, per_class, dim = 32, 4, 512
    common = F.normalize(torch.randn(dim, generator=g), dim=0)
    own = F.normalize(torch.randn(classes, dim, generator=g), dim=1)
    centres = F.normalize(0.28 ** 0.5 * common + 0.72 ** 0.5 * own, dim=1)  # ~1.2 apart
    centres[1] = F.normalize(centres[0] + 0.27 * own[1], dim=0)  # ~0.27 from class 0
    x = F.normalize(centres.repeat_interleave(per_class, 0) + 0.005 * torch.randn(classes * per_class, dim, generator=g), dim=1)
    labels = torch.arange(classes).repeat_interleave(per_class)
    loss_fn = metric_loss("margin")
    torch.manual_seed(0)
    anchors = loss_fn.miner(x.double(), labels)[0]
    assert anchors.unique().numel() == classes * per_class
    torch.manual_seed(0)
    assert loss_fn.miner(x, labels)[0].unique().numel() < classes * per_class // 2  # what float32 would give
    assert torch.isfinite(loss_fn(x, labels))


@pytest.mark.parametrize("loss, mining", [("triplet", "semihard"), ("triplet", "batch_hard"), ("triplet", "all"),
                                          ("contrastive", "all"), ("margin", "all")])
def test_a_batch_of_one_class_gives_zero_loss_with_a_graph(loss, mining):
    x = torch.randn(4, 3, dtype=F64, requires_grad=True)
    out = metric_loss(loss, mining)(x, torch.zeros(4, dtype=torch.long))
    if loss != "contrastive":  # contrastive still pulls the positive pairs together
        assert out.item() == 0.0
    out.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_metric_loss_rejects_bad_arguments():
    with pytest.raises(ValueError, match="loss"):
        metric_loss("arcface")
    with pytest.raises(ValueError, match="mining"):
        metric_loss("triplet", "hardest")
    loss_fn = metric_loss()
    with pytest.raises(ValueError):
        loss_fn(torch.randn(4, 2, 3), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError):
        loss_fn(torch.randn(4, 3), torch.zeros(5, dtype=torch.long))
    with pytest.raises(TypeError):
        loss_fn(torch.randn(4, 3), torch.zeros(4))
