"""FIRe's attention-decorrelation loss against naive loops over pairs of maps."""

from __future__ import annotations

import pytest
import torch

from lit.losses import AttentionDecorrelationLoss, attention_decorrelation_loss

F64 = torch.float64


def naive_decorrelation(attention: torch.Tensor) -> float:
    per_image = []
    for maps in attention:
        flat = [m.reshape(-1) for m in maps]
        total, count = 0.0, 0
        for i in range(len(flat)):
            for j in range(len(flat)):
                if i == j:
                    continue
                dot = float((flat[i] * flat[j]).sum())
                total += dot / (float(flat[i].norm()) * float(flat[j].norm()))
                count += 1
        per_image.append(total / count)
    return sum(per_image) / len(per_image)


def test_decorrelation_matches_naive_loops():
    att = torch.rand(3, 5, 4, 3, generator=torch.Generator().manual_seed(1), dtype=F64)
    assert attention_decorrelation_loss(att).item() == pytest.approx(
        naive_decorrelation(att), abs=1e-12
    )


def test_decorrelation_single_image_equals_batch_of_one():
    att = torch.rand(6, 3, 3, dtype=F64)
    assert torch.allclose(
        attention_decorrelation_loss(att), attention_decorrelation_loss(att[None])
    )


def test_decorrelation_of_batch_is_mean_over_images():
    att = torch.rand(4, 5, 3, 3, dtype=F64)
    per_image = torch.stack([attention_decorrelation_loss(a) for a in att])
    assert torch.allclose(attention_decorrelation_loss(att), per_image.mean())


def test_decorrelation_of_identical_maps_is_one():
    one_map = torch.rand(1, 1, 5, 7)
    att = one_map.expand(2, 6, 5, 7) * torch.arange(1, 7.0).view(1, 6, 1, 1)  # scale is irrelevant
    assert attention_decorrelation_loss(att).item() == pytest.approx(1.0, abs=1e-6)


def test_decorrelation_of_disjoint_one_hot_maps_is_zero():
    att = torch.eye(12).view(12, 3, 4)  # map n is 1 at pixel n only
    assert attention_decorrelation_loss(att).item() == 0.0


def test_decorrelation_gradcheck():
    att = torch.rand(2, 3, 2, 3, dtype=F64).add_(0.1).requires_grad_()
    assert torch.autograd.gradcheck(attention_decorrelation_loss, (att,))


def test_decorrelation_module_and_exceptions():
    att = torch.rand(2, 3, 4, 4)
    assert torch.equal(AttentionDecorrelationLoss()(att), attention_decorrelation_loss(att))
    with pytest.raises(ValueError):
        attention_decorrelation_loss(torch.rand(3, 4))
    with pytest.raises(ValueError):
        attention_decorrelation_loss(torch.rand(2, 1, 4, 4))  # N = 1: no pair
