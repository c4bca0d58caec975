"""Small feature files of known structure for the pipeline and index-file tests."""

import os

import numpy as np
import torch

from lit.features import FeatureStore
from lit.types import LocalFeatures

BAD_NAME = os.fsdecode(b"scene_b/caf\xe9.jpg")  # not valid UTF-8: a surrogate-escaped str


def local_features(rng, k=40, d=8, centre=None):
    x = rng.normal(size=(k, d)).astype(np.float32)
    if centre is not None:
        x += centre
    return LocalFeatures(descriptors=torch.from_numpy(x), strengths=torch.ones(k), scales=torch.ones(k),
                         superfeature_ids=torch.arange(k), positions=torch.zeros(k, 2))


def write_feature_file(path, fingerprint="fp-a", names=("scene_a/1.jpg", "scene_a/2.jpg", "scene_b/1.jpg", "scene_b/2.jpg"),
                  seed=0):
    """A feature file whose scene_a images share a descriptor centre, and scene_b another."""
    rng = np.random.default_rng(seed)
    centres = {"scene_a": np.full(8, 3.0, np.float32), "scene_b": np.full(8, -3.0, np.float32)}
    feats = []
    with FeatureStore(path, "a", descriptor_dim=8, fingerprint=fingerprint) as st:
        for n in names:
            f = local_features(rng, centre=centres[n.split("/")[0]])
            st.append(n, f)
            feats.append(f)
    return feats
