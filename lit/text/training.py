"""The recipe of the shipped text head: concept texts -> MiniLM -> keyed head, InfoNCE.

Used by ``weights/make_lit_text_effl0.py`` (the shipped head, all 1000 classes) and by
``benchmarks/text_search.py`` (the same recipe on 800 classes, evaluated on the 200 others).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .concepts import concept_texts
from .head import HeadConfig, TextHead, train_head

#: The shipped recipe (chosen on the held-out split of ``benchmarks/text_search.py``).
RECIPE = HeadConfig(kind="keyed", epochs=20, lr=3e-4, weight_decay=0.05, batch_size=64, negatives=255)


@dataclass
class ConceptEmbeddings:
    """Sentence embeddings of the concept texts of all classes.

    Shape:
        - embeddings: :math:`(N, 384)`; labels: :math:`(N,)`; keys: :math:`(C, 384)`.
    """

    embeddings: torch.Tensor
    labels: torch.Tensor
    kinds: list[str]
    keys: torch.Tensor

    def select(self, classes, kinds=("definition",)) -> tuple[torch.Tensor, torch.Tensor]:
        cls = set(int(c) for c in classes)
        m = torch.tensor([int(y) in cls and k in kinds for y, k in zip(self.labels.tolist(), self.kinds, strict=True)])
        return self.embeddings[m], self.labels[m]


def class_keys(embeddings: torch.Tensor, labels: torch.Tensor, kinds: list[str], num_classes: int) -> torch.Tensor:
    """Key of each class: the normalised mean embedding of its names (lemmas and templated lemmas)."""
    m = torch.tensor([k != "definition" for k in kinds])
    keys = torch.zeros(num_classes, embeddings.shape[1], dtype=embeddings.dtype).index_add_(0, labels[m], embeddings[m])
    return F.normalize(keys, dim=-1)


def concept_embeddings(encoder, num_classes: int = 1000, cache: str | os.PathLike | None = None) -> ConceptEmbeddings:
    """Embed every class's lemmas, templates and gloss once (cached in ``cache`` when given)."""
    if cache is not None and os.path.isfile(cache):
        raw = torch.load(cache, weights_only=True)
        return ConceptEmbeddings(raw["embeddings"], raw["labels"], list(raw["kinds"]), raw["keys"])
    ct = concept_texts(range(num_classes))
    emb, _ = encoder.embed(list(ct.texts), batch_size=128)
    emb, labels = emb.cpu(), torch.tensor(ct.labels)
    out = ConceptEmbeddings(emb, labels, list(ct.kinds), class_keys(emb, labels, list(ct.kinds), num_classes))
    if cache is not None:
        torch.save({"embeddings": out.embeddings, "labels": out.labels, "kinds": out.kinds, "keys": out.keys}, cache)
    return out


def train_concept_head(concepts: ConceptEmbeddings, classes, cfg: HeadConfig = RECIPE,
                       eval_fn=None) -> tuple[TextHead, list[dict]]:
    """Train a keyed head on the glosses of ``classes`` (negatives: those classes)."""
    x, y = concepts.select(classes)
    return train_head(x, y, torch.zeros(0, cfg.out_dim), torch.as_tensor(list(classes)), cfg, eval_fn=eval_fn,
                      keys=concepts.keys)
