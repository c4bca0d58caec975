"""Training losses of lit: FIRe's attention-decorrelation and super-feature losses, and
global metric-learning losses (contrastive, triplet, margin) with their miners.

Each concept has a functional core and a thin ``nn.Module`` wrapper.
"""

from .attention import AttentionDecorrelationLoss, attention_decorrelation_loss
from .contrastive import (
    ContrastiveLoss,
    PairwiseContrastiveLoss,
    contrastive_loss,
    pairwise_contrastive_loss,
)
from .distance import pairwise_l2_distance, safe_sqrt
from .margin import MarginLoss, margin_loss
from .mining import (
    Triplets,
    all_triplets,
    batch_hard_triplets,
    distance_weighted_probabilities,
    distance_weighted_triplets,
    negative_pairs,
    positive_pairs,
    semihard_triplets,
)
from .superfeature import (
    SuperFeatureLoss,
    SuperFeatureLossOutput,
    match_for_loss,
    superfeature_loss,
)
from .triplet import TripletMarginLoss, mine_triplets, triplet_margin_loss

__all__ = [
    "AttentionDecorrelationLoss",
    "ContrastiveLoss",
    "MarginLoss",
    "PairwiseContrastiveLoss",
    "SuperFeatureLoss",
    "SuperFeatureLossOutput",
    "TripletMarginLoss",
    "Triplets",
    "all_triplets",
    "attention_decorrelation_loss",
    "batch_hard_triplets",
    "contrastive_loss",
    "distance_weighted_probabilities",
    "distance_weighted_triplets",
    "margin_loss",
    "match_for_loss",
    "mine_triplets",
    "negative_pairs",
    "pairwise_contrastive_loss",
    "pairwise_l2_distance",
    "positive_pairs",
    "safe_sqrt",
    "semihard_triplets",
    "superfeature_loss",
    "triplet_margin_loss",
]
