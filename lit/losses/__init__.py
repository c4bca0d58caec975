"""Training losses of FIRe: the attention-decorrelation loss and the super-feature loss.

Each has a functional core and a thin ``nn.Module`` wrapper. The losses of the
global-descriptor baseline (triplet, contrastive, margin, with their miners) are
pytorch-metric-learning's, configured in :mod:`lit.metric.losses`.
"""

from .attention import AttentionDecorrelationLoss, attention_decorrelation_loss
from .distance import safe_sqrt
from .superfeature import (
    SuperFeatureLoss,
    SuperFeatureLossOutput,
    match_for_loss,
    superfeature_loss,
)

__all__ = [
    "AttentionDecorrelationLoss",
    "SuperFeatureLoss",
    "SuperFeatureLossOutput",
    "attention_decorrelation_loss",
    "match_for_loss",
    "safe_sqrt",
    "superfeature_loss",
]
