"""Evaluation: the Revisited Oxford/Paris protocol, the classic one, and Recall@k.

>>> from lit.evaluate import load_ground_truth, revisited_map, format_table
>>> cfg = load_ground_truth("gnd_roxford5k.pkl")            # doctest: +SKIP
>>> res = revisited_map(ranks, cfg["gnd"], kappas=(1, 5, 10))  # doctest: +SKIP
>>> print(format_table({"roxford5k": res}))                  # doctest: +SKIP
"""

from .recall import recall_at_k
from .revisited import (
    PROTOCOLS,
    classic_map,
    compute_ap,
    format_table,
    load_ground_truth,
    revisited_map,
    validate_ground_truth,
)

__all__ = [
    "PROTOCOLS", "classic_map", "compute_ap", "format_table", "load_ground_truth",
    "recall_at_k", "revisited_map", "validate_ground_truth",
]
