"""What every text model shares: the interface and the cleaning of text queries.

A text model maps text queries and photos into one joint space (unit vectors; a photo's
score for a query is their dot product). :class:`BaseTextModel` is the interface that
search uses; :class:`lit.text.model.TextModel` (MiniLM + a head trained by lit) and
:class:`lit.text.clip.ClipTextModel` implement it, and :mod:`lit.text.factory` builds them
by name.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field

import torch

from ..errors import UsageError

__all__ = ["DEFAULT_TEXT_MODEL", "BaseTextModel", "TextQueries", "clean_queries"]

#: the text model used when none is named: shipped with lit (``lit.weights``)
DEFAULT_TEXT_MODEL = "lit-text-effl0"


@dataclass
class TextQueries:
    """Cleaned text queries, their joint-space embeddings and one note per remark.

    Shape:
        - embeddings: :math:`(Q, D)` unit norm.
    """

    texts: list[str]
    embeddings: torch.Tensor
    notes: list[str] = field(default_factory=list)


def _non_latin_share(text: str) -> float:
    letters = [c for c in text if c.isalpha()]
    if not letters:
        return 0.0
    return sum("LATIN" not in unicodedata.name(c, "") for c in letters) / len(letters)


def clean_queries(texts, latin_note: bool = True) -> tuple[list[str], list[str]]:
    """Collapse the white space of each query; raise on empty ones; return ``(texts, notes)``.

    Args:
        latin_note: note the queries mostly not in Latin script (for English-only models).

    Raises:
        UsageError: no query, or a query that is empty or only whitespace (a ``ValueError``).
        TypeError: a query that is not a ``str``.
    """
    texts = list(texts)
    if not texts:
        raise UsageError("no text query given")
    out, notes = [], []
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"text query {i + 1} is a {type(t).__name__}, not a str")
        s = " ".join(t.split())
        if not s:
            raise UsageError(f"text query {i + 1} is empty (or only whitespace): give some words to search for")
        if latin_note and _non_latin_share(s) > 0.5:
            notes.append(f"text query {i + 1} ({s[:30]!r}) is mostly not in Latin script: the text model is "
                         "English-only (all-MiniLM-L6-v2), so its results are unreliable")
        out.append(s)
    return out, notes


class BaseTextModel:
    """A text tower and the frozen image tower whose space it maps into.

    Subclasses set ``name``, ``image_tower`` (with ``name``, ``embed(images)``) and
    implement :meth:`encode`, :meth:`image_space` and :attr:`max_tokens`.
    """

    name: str
    image_tower: torch.nn.Module
    #: whether queries mostly not in Latin script get a note (English-only text towers)
    english_only: bool = True

    @property
    def tower_name(self) -> str:
        """Name of the image embeddings this model reads (stored in feature and index files)."""
        return self.image_tower.name

    @property
    def max_tokens(self) -> int:
        raise NotImplementedError

    def encode(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Joint-space embeddings :math:`(Q, D)` of already-clean texts, and which were
        truncated :math:`(Q,)` bool."""
        raise NotImplementedError

    def image_space(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Stored image embeddings :math:`(N, E)` -> joint-space vectors :math:`(N, D)`."""
        raise NotImplementedError

    def embed_texts(self, texts) -> TextQueries:
        """Clean (see :func:`clean_queries`), embed, and note the queries cut at the model's limit."""
        texts, notes = clean_queries(texts, latin_note=self.english_only)
        emb, truncated = self.encode(texts)
        for i in torch.nonzero(truncated).flatten().tolist():
            notes.append(f"text query {i + 1} is longer than the text model's limit of {self.max_tokens} tokens: "
                         "only its beginning was used")
        return TextQueries(texts, emb, notes)
