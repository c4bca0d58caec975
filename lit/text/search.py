"""Text search on an index: queries -> joint space -> photos ranked by dot product."""

from __future__ import annotations

import os

import torch

from .._names import display_name
from ..errors import UsageError
from ..index_file import read_text
from ..pipeline import read_list_file
from .calibration import CONFIDENT_Z, calibrate, reference_scores
from .factory import load_text_model
from .model import TextModel


def read_text_file(path: str | os.PathLike) -> list[str]:
    """One query per line; blank lines and lines starting with ``#`` are skipped, a UTF-8
    byte-order mark is removed (:func:`lit.pipeline.read_list_file`).

    Raises:
        UsageError: no such file, a folder, text that is not UTF-8 (one line naming the
            file and the line), or no query at all.
    """
    queries = read_list_file(path, what="query file", names=False)
    if not queries:
        raise UsageError(f"{display_name(os.fspath(path))}: no text queries (one per line; blank and '#' lines are "
                         "skipped)")
    return queries


def rank_images(text_emb: torch.Tensor, image_emb: torch.Tensor, valid: torch.Tensor | None = None,
                topk: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank images for each text by dot product in the joint space; images not ``valid`` are left out.

    Shape:
        - text_emb: :math:`(Q, D)`; image_emb: :math:`(N, D)`; valid: :math:`(N,)` bool.
        - output: ranks and scores :math:`(Q, k)`, k = min(topk, number of valid images).
    """
    scores = text_emb @ image_emb.to(text_emb).T
    n = image_emb.shape[0]
    if valid is not None:
        scores = scores.masked_fill(~valid.to(scores.device)[None], float("-inf"))
        n = int(valid.sum())
    k = n if topk is None else min(int(topk), n)
    s, r = scores.topk(k, dim=1)
    return r, s


def search_index_by_text(index: str | os.PathLike, texts, model: TextModel | str | None = None,
                         topk: int | None = 10, device: str = "cpu") -> tuple[list[dict], list[str]]:
    """Search an index made by ``lit index`` with text queries.

    Args:
        index: the index file (its ``/text`` group holds the photos' embeddings).
        texts: the queries.
        model: a :class:`TextModel` or its name (default ``lit-text-effl0``); its image tower
            must be the one the index's embeddings come from.
        topk: results per query (``None``: all).

    Returns:
        ``(results, notes)``: one ``{"query": text, "confident", "results": [{"rank", "name",
        "score", "calibrated"}]}`` per query (the shape of image search results), and remarks
        for the user (truncated or non-English queries, photos without embeddings, queries
        without a confident result). ``score`` is the dot product in the joint space (the
        ranking); ``calibrated`` is that score in standard deviations above the scores of
        meaningless texts on the same photo (:mod:`lit.text.calibration`), comparable across
        queries; ``confident``: the query's best calibrated score reaches
        :data:`~lit.text.calibration.CONFIDENT_Z`.

    Raises:
        ValueError: empty query, index without embeddings, or a model of another image tower.
    """
    tower, names, emb, valid, _ = read_text(index)
    model = model if isinstance(model, TextModel) or hasattr(model, "embed_texts") else load_text_model(model, device)
    if model.tower_name != tower:
        raise UsageError(f"{index}: its image embeddings are {tower!r}, but the text model {model.name!r} uses "
                         f"{model.tower_name!r}: pick a text model of that tower, or re-embed")
    queries = model.embed_texts(texts)
    notes = list(queries.notes)
    if not valid.any():
        raise UsageError(f"{index}: none of its images has a global embedding for text search")
    if not valid.all():
        notes.append(f"{int((~valid).sum())} of {len(valid)} indexed images have no global embedding and are never returned")
    dev = queries.embeddings.device
    image = model.image_space(torch.from_numpy(emb).to(dev))
    ranks, scores = rank_images(queries.embeddings, image, torch.from_numpy(valid).to(dev), topk)
    z = calibrate(queries.embeddings @ image.T, reference_scores(model, image))
    z = z.masked_fill(~torch.from_numpy(valid).to(z.device)[None], float("-inf"))
    best_z = z.max(1).values.cpu().numpy()
    z = z.gather(1, ranks).cpu().numpy()
    ranks, scores = ranks.cpu().numpy(), scores.cpu().numpy()
    results = []
    for qi, text in enumerate(queries.texts):
        hits = [{"rank": r + 1, "name": names[int(ranks[qi, r])], "score": float(scores[qi, r]),
                 "calibrated": float(z[qi, r])} for r in range(ranks.shape[1])]
        confident = bool(best_z[qi] >= CONFIDENT_Z)
        results.append({"query": text, "results": hits, "confident": confident})
        if not confident:
            notes.append(f"no confident result for {text!r}: its best calibrated score is {best_z[qi]:.1f}, under "
                         f"{CONFIDENT_Z:g} (meaningless, or nothing like it in the collection)")
    return results, notes


def image_embedder(text_model: str | None = None, device: str = "cpu"):
    """The image tower ``lit extract`` runs to store global embeddings (``None`` name: the default model's).

    Returns ``None`` for ``"none"`` (no embeddings).
    """
    from .factory import image_tower_of

    if text_model == "none":
        return None
    return image_tower_of(text_model, device)


def default_image_embedder(text_model: str | None, device) -> tuple[object | None, str | None]:
    """The tower ``lit extract`` runs by default, and a note when it cannot (text packages missing).

    An explicitly named text model that cannot load raises; the default one only gives a note.
    """
    if text_model == "none":
        return None, None
    try:
        return image_embedder(text_model, str(device)), None
    except ImportError as err:
        if text_model is not None:
            raise
        return None, f"note: no global image embeddings stored, text search will not work on this file ({err})"


def cli_text_search(index, texts, text_file, text_model, topk, device) -> tuple[list[dict], list[str]]:
    """What ``lit search --text/--text-file`` runs: the queries of both, in order."""
    queries = list(texts) + (read_text_file(text_file) if text_file else [])
    return search_index_by_text(index, queries, text_model, topk=topk, device=device)
