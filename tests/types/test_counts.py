"""Result types give their size as len() and as the property count (not the tuple method)."""

import torch

from lit.types import LocalFeatures, Matches, SuperFeatures


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
