"""Text models: a text tower and the frozen image tower whose space it maps into.

``load_text_model(name)`` gives a :class:`TextModel` with

- ``embed_texts(texts)``: joint-space embeddings of text queries (with notes on truncation),
- ``image_tower``: the frozen image tower, run by ``lit extract`` to store one global
  embedding per photo (``tower_name`` names those embeddings in feature and index files),
- ``image_space(embeddings)``: stored image embeddings -> joint-space vectors.

Names: ``lit-text-effl0`` (the default: all-MiniLM-L6-v2 + the head trained by lit, shipped in
``weights/``), a path to such a head file, ``conse-effl0`` (training-free baseline), or
``open_clip:ARCH:TAG`` when ``open_clip_torch`` is installed (:mod:`lit.text.clip`).
"""

from __future__ import annotations

import hashlib
import json
import os
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from .head import HeadConfig, TextHead

WEIGHTS_DIR = Path(__file__).resolve().parent.parent.parent / "weights"
DEFAULT_TEXT_MODEL = "lit-text-effl0"
HEAD_FORMAT = "lit-text-head"


@dataclass(frozen=True)
class TextHeadCfg:
    """A registered text head shipped in ``weights/`` (name -> file, full sha256)."""

    name: str
    filename: str
    sha256: str
    description: str = ""


def _load_registry() -> dict[str, TextHeadCfg]:
    path = WEIGHTS_DIR / "text_registry.json"
    if not path.is_file():
        return {}
    return {e["name"]: TextHeadCfg(**e) for e in json.loads(path.read_text())}


TEXT_REGISTRY: dict[str, TextHeadCfg] = _load_registry()


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


def clean_queries(texts) -> tuple[list[str], list[str]]:
    """Strip each query; raise on empty ones; return ``(texts, notes)``.

    Raises:
        ValueError: no query, or a query that is empty or only whitespace.
    """
    texts = list(texts)
    if not texts:
        raise ValueError("no text query given")
    out, notes = [], []
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"text query {i + 1} is a {type(t).__name__}, not a str")
        s = " ".join(t.split())
        if not s:
            raise ValueError(f"text query {i + 1} is empty (or only whitespace): give some words to search for")
        if _non_latin_share(s) > 0.5:
            notes.append(f"text query {i + 1} ({s[:30]!r}) is mostly not in Latin script: the text model is "
                         "English-only (all-MiniLM-L6-v2), so its results are unreliable")
        out.append(s)
    return out, notes


class TextModel:
    """MiniLM + trained head (or the training-free ConSE map) into an image tower's space.

    The joint space is the square root of the class posterior (unit vectors, ``C`` = 1000):
    a photo's is its tower's posterior, a text's is the head's class distribution, and
    their dot product is the Bhattacharyya coefficient of the two distributions.

    Args:
        encoder: a :class:`~lit.text.minilm.MiniLM`.
        head: a :class:`~lit.text.head.TextHead`, or ``None`` for the training-free baseline.
        tower: the frozen :class:`~lit.text.towers.EfficientNetTower`.
        name: the model's name.
        class_keys: ``(C, 384)`` class-name embeddings (training-free baseline only).
    """

    def __init__(self, encoder, head: TextHead | None, tower, name: str, class_keys: torch.Tensor | None = None) -> None:
        self.encoder, self.head, self.image_tower, self.name = encoder, head, tower, name
        self.class_keys = class_keys
        if head is None and class_keys is None:
            raise ValueError("a text model needs a head or class keys")

    @property
    def tower_name(self) -> str:
        return self.image_tower.name

    @property
    def max_tokens(self) -> int:
        return self.encoder.max_tokens

    @torch.no_grad()
    def encode(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Joint-space embeddings of already-clean texts, and which were truncated.

        Shape:
            - output: :math:`(Q, D)` unit norm, :math:`(Q,)` bool.
        """
        m, truncated = self.encoder.embed(texts)
        if self.head is not None:
            tokens = self.encoder.token_counts(texts) if self.head.cfg.free_min_tokens > 0 else None
            q = torch.sqrt(self.head.class_weights(m, tokens))
        else:  # ConSE: softmax over class-name similarities
            q = torch.sqrt(torch.softmax(m @ self.class_keys.to(m).T / 0.05, dim=-1))
        return F.normalize(q, dim=-1), truncated

    def embed_texts(self, texts) -> TextQueries:
        """Clean (see :func:`clean_queries`), embed, and note the queries cut at the model's limit."""
        texts, notes = clean_queries(texts)
        emb, truncated = self.encode(texts)
        for i in torch.nonzero(truncated).flatten().tolist():
            notes.append(f"text query {i + 1} is longer than the text model's limit of {self.max_tokens} tokens: "
                         "only its beginning was used")
        return TextQueries(texts, emb, notes)

    @torch.no_grad()
    def image_space(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Stored pooled image embeddings ``(N, D)`` -> joint-space vectors (square-root class posterior)."""
        return F.normalize(torch.sqrt(self.image_tower.posterior(embeddings)), dim=-1)


def file_sha256(path: str | os.PathLike) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def save_head(path: str | os.PathLike, head: TextHead, tower: str, extra: dict | None = None) -> str:
    """Write a head file (learned parameters; class keys in float16; prototypes come from the tower)."""
    state = {k: v.detach().cpu() for k, v in head.state_dict().items() if k != "prototypes"}
    if "keys" in state:
        state["keys"] = state["keys"].half()
    torch.save({"format": HEAD_FORMAT, "version": 1, "config": json.dumps(head.cfg.to_dict()), "tower": tower,
                "encoder": "all-MiniLM-L6-v2", "extra": json.dumps(extra or {}), "state_dict": state}, path)
    return file_sha256(path)


def load_head(path: str | os.PathLike, sha256: str | None = None, device="cpu"):
    """Read a head file (``weights_only``); returns ``(state, cfg, tower_name)``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such text head file")
    if sha256 is not None and file_sha256(path) != sha256:
        raise ValueError(f"{path}: sha256 does not match the registry's {sha256}")
    try:
        raw = torch.load(path, map_location=device, weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file
        raise ValueError(f"{path}: not a readable text head file ({type(err).__name__})") from None
    if not isinstance(raw, dict) or raw.get("format") != HEAD_FORMAT:
        raise ValueError(f"{path}: not a lit text head file (format {raw.get('format') if isinstance(raw, dict) else None!r})")
    return raw["state_dict"], HeadConfig(**json.loads(raw["config"])), raw["tower"]


def load_text_model(name: str | os.PathLike | None = None, device: str | torch.device = "cpu"):
    """Load a text model by name or head path (see the module docstring); default ``lit-text-effl0``."""
    from .minilm import load_minilm
    from .towers import load_tower

    name = os.fspath(name) if name is not None else DEFAULT_TEXT_MODEL
    if name.startswith("open_clip:"):
        from .clip import load_open_clip

        return load_open_clip(name, device=device)
    if name.startswith("conse-"):
        tower = load_tower(name.split("-", 1)[1], device)
        reg = TEXT_REGISTRY.get(f"lit-text-{tower.name}")
        if reg is None:
            raise ValueError(f"{name}: the class keys ship with lit-text-{tower.name}, which is not installed")
        state, _, _ = load_head(WEIGHTS_DIR / reg.filename, reg.sha256, device)
        return TextModel(load_minilm(device=device), None, tower, name, class_keys=state["keys"].float())
    state, cfg, tower_name = load_head(*_head_path(name), device)
    tower = load_tower(tower_name, device)
    keys = state.get("keys")
    head = TextHead(cfg, keys.float() if keys is not None else None, tower.prototypes[0] if cfg.kind == "linear" else None)
    state = {k: v.float() for k, v in state.items()}
    if cfg.kind == "linear":
        state["prototypes"] = head.prototypes
    head.load_state_dict(state)
    return TextModel(load_minilm(device=device), head.to(device).eval(), tower, name)


def _head_path(name: str) -> tuple[Path, str | None]:
    if name in TEXT_REGISTRY:
        reg = TEXT_REGISTRY[name]
        return WEIGHTS_DIR / reg.filename, reg.sha256
    if os.path.isfile(name):
        return Path(name), None
    known = ", ".join([*TEXT_REGISTRY, "conse-effl0", "open_clip:ARCH:TAG"])
    raise ValueError(f"{name}: neither a registered text model ({known}) nor a text head file")


def image_tower_of(name: str | os.PathLike | None = None, device: str | torch.device = "cpu"):
    """Only the image tower of a text model (what ``lit extract`` runs), without loading its text side."""
    from .towers import load_tower

    name = os.fspath(name) if name is not None else DEFAULT_TEXT_MODEL
    if name.startswith("open_clip:"):
        from .clip import load_open_clip

        return load_open_clip(name, device=device).image_tower
    if name.startswith("conse-"):
        return load_tower(name.split("-", 1)[1], device)
    path, sha = _head_path(name)
    return load_tower(load_head(path, sha)[2], device)
