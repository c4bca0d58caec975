"""Super-feature models: configuration, backbone, LIT, checkpoints."""

from .checkpoint import (
    CheckpointError,
    config_from_fire_params,
    convert_fire_state_dict,
    model_from_checkpoint,
    read_checkpoint,
    save_checkpoint,
    save_fire_checkpoint,
    to_fire_state_dict,
)
from .config import (
    BackboneConfig,
    LITConfig,
    MatchConfig,
    ModelConfig,
    RuntimeConfig,
    lit_effl0_config,
)
from .lit_init import init_lit_from_tokens, principal_directions, spherical_kmeans
from .lit_module import LIT
from .model import SuperFeatureModel, attention_centroids, strength
from .tokens import (
    TOKEN_DIM,
    TOKEN_IMAGE_SIZE,
    TOKEN_NUM,
    TOKEN_SCALES,
    TokenExtractor,
    fit_token_projection,
    token_extractor,
    tokens_beside,
)
from .whitening import pca_whitening

__all__ = [
    "TOKEN_DIM", "TOKEN_IMAGE_SIZE", "TOKEN_NUM", "TOKEN_SCALES",
    "LIT", "BackboneConfig", "CheckpointError", "LITConfig", "MatchConfig", "ModelConfig", "RuntimeConfig",
    "SuperFeatureModel", "TokenExtractor", "attention_centroids", "lit_effl0_config", "config_from_fire_params", "convert_fire_state_dict",
    "fit_token_projection", "init_lit_from_tokens", "model_from_checkpoint", "pca_whitening", "principal_directions", "read_checkpoint",
    "save_checkpoint", "save_fire_checkpoint",
    "spherical_kmeans", "strength", "to_fire_state_dict", "token_extractor", "tokens_beside",
]
