"""lit.types: the result types have short reprs and check their lengths."""

import pytest
import torch

import lit
from lit.types import LocalFeatures, Matches, SuperFeatures


def test_result_types_have_short_reprs_and_check_lengths():
    feats = LocalFeatures(torch.randn(300, 128), torch.rand(300), torch.tensor([1.0, 0.5, 2.0]).repeat(100),
                          torch.arange(300), torch.zeros(300, 2))
    assert repr(feats) == "LocalFeatures(300 features, dim 128, scales 0.5-2, cpu)"
    assert str(SuperFeatures(torch.zeros(64, 128), torch.zeros(64), torch.zeros(64, 24, 32), 0.707)) == \
        "SuperFeatures(64 super-features, dim 128, attention 24x32, scale 0.707, cpu)"
    m = Matches(torch.tensor([0, 1]), torch.tensor([3, 2]), torch.tensor([0.95, 0.91]), torch.ones(2), torch.ones(2))
    assert repr(m) == "Matches(2 matches, similarity 0.910-0.950, score 1.860)"
    assert len(repr(feats)) < 100
    with pytest.raises(ValueError, match=r"strengths must have shape \(3,\)"):
        LocalFeatures(torch.zeros(3, 4), torch.zeros(4), torch.zeros(3), torch.arange(3))
    with pytest.raises(ValueError, match=r"positions must have shape \(3, 2\)"):
        LocalFeatures(torch.zeros(3, 4), torch.zeros(3), torch.zeros(3), torch.arange(3), torch.zeros(2, 2))
    with pytest.raises(ValueError, match="descriptors must be a"):
        LocalFeatures(torch.zeros(3), torch.zeros(3), torch.zeros(3), torch.arange(3))
    with pytest.raises(ValueError, match="scales"):
        feats._replace(scales=torch.zeros(2))
    assert "not L2-normalised" in LocalFeatures.__doc__ and "not L2-normalised" in lit.models.SuperFeatureModel.extract.__doc__


# Result types give their size as len() and as the property count (not the tuple method).

def test_count_is_the_number_of_items():
    m = Matches(torch.tensor([0, 1, 2]), torch.tensor([1, 2, 0]), torch.ones(3), torch.ones(3), torch.ones(3))
    assert m.count == len(m) == 3 and m.count > 0
    f = LocalFeatures(torch.zeros(4, 8), torch.ones(4), torch.ones(4), torch.arange(4))
    assert f.count == len(f) == 4
    assert f._replace(strengths=torch.zeros(4)).count == 4  # still a NamedTuple
    sf = SuperFeatures(torch.zeros(5, 8), torch.ones(5), torch.zeros(5, 2, 2))
    assert sf.count == 5
    empty = Matches(*(torch.zeros(0),) * 5)
    assert empty.count == 0 and not empty.count > 0
