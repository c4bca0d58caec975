"""Search photos by text: one joint image-text space (issue 20).

A frozen ImageNet image tower (EfficientNet-Lite) gives each photo a class posterior; a text
tower (all-MiniLM-L6-v2 and a small head trained by lit on the WordNet glosses of the classes
and the lemmas of the ImageNet-21k synsets with soft targets from WordNet's hypernyms,
positive and random negative pairs, InfoNCE; for queries of 6 tokens or more multiplied with
the training-free class-name map) gives each text query a class distribution; the
joint space holds their square roots, and a photo's score for a query is their dot product.

Modules: :mod:`~lit.text.base` (the interface every text model implements, query
cleaning), :mod:`~lit.text.model` (MiniLM + head, and the head file),
:mod:`~lit.text.clip` (open_clip towers), :mod:`~lit.text.factory` (models by name),
:mod:`~lit.text.towers`, :mod:`~lit.text.minilm`, :mod:`~lit.text.head`.

.. code-block:: python

    from lit.text import load_text_model, search_index_by_text
    model = load_text_model()                       # lit-text-effl0, offline
    q = model.embed_texts(["a church at night"])    # q.embeddings (1, 1000), q.notes
    results, notes = search_index_by_text("i.h5", ["a church at night"], model, topk=10)
"""

from .base import DEFAULT_TEXT_MODEL, BaseTextModel, TextQueries, clean_queries
from .factory import image_tower_of, load_text_model
from .head import HeadConfig, TextHead, info_nce_loss, recall_at_k, train_head
from .model import TextModel
from .search import (
    default_image_embedder,
    image_embedder,
    rank_images,
    read_text_file,
    search_index_by_text,
)
from .store import add_embeddings, index_embeddings_from_features

__all__ = [
    "DEFAULT_TEXT_MODEL", "BaseTextModel", "HeadConfig", "TextHead", "TextModel", "TextQueries", "add_embeddings",
    "clean_queries", "default_image_embedder", "image_embedder", "image_tower_of", "index_embeddings_from_features",
    "info_nce_loss", "load_text_model", "rank_images", "read_text_file", "recall_at_k", "search_index_by_text",
    "train_head",
]
