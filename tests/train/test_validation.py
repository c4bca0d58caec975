"""lit.train.validation: average precision against hand-computed values."""

from __future__ import annotations

import pytest

from lit.train import (
    average_precision,
)


def test_average_precision_matches_hand_computed_values():
    assert average_precision([3, 1, 2], [3]) == 1.0
    # positives at ranks 1 and 3: ((0 + 1/2)/2 + (1/3 + 2/4)/2) / 2
    assert average_precision([0, 5, 1, 6], [5, 6]) == pytest.approx(((0 + 0.5) / 2 + (1 / 3 + 0.5) / 2) / 2)
    assert average_precision([0, 5, 1, 6], [5, 6], junk=[0, 1]) == 1.0
