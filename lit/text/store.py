"""Global image embeddings for older feature files and indexes (``lit text embed``).

The embeddings themselves are stored by the file owners: :meth:`lit.features.FeatureStore
.write_embeddings` (group ``global/<tower>`` of a feature file, written by ``lit extract``)
and :mod:`lit.index_file` (group ``/text`` of an index, written by ``lit index``).
"""

from __future__ import annotations

import logging
import os

from .._image import ImageReadError, display_name, load_image
from ..errors import FeatureFileError, PipelineError
from ..features import FeatureStore, open_features
from ..index_file import TextEmbeddings, read_info, update_text

log = logging.getLogger(__name__)

__all__ = ["add_embeddings", "index_embeddings_from_features"]


def add_embeddings(features: str | os.PathLike, root: str | os.PathLike | None, text_model=None,
                   device: str = "cpu", progress: bool = True) -> int:
    """Compute the missing global embeddings of a feature file's images (read again from ``root``).

    Args:
        features: the feature file.
        root: the folder its names are relative to (default: the one it records).
        text_model: a text model (or its name) whose image tower embeds the photos.

    Returns:
        The number of images embedded now.

    Raises:
        FeatureFileError: an image cannot be read again (names the image and says to pass ``root``).
    """
    from .factory import load_text_model

    model = text_model if text_model is not None and not isinstance(text_model, str) else load_text_model(text_model, device)
    tower = model.image_tower
    with FeatureStore(features, "a") as store:
        root = os.fspath(root) if root is not None else store.root
        valid = store.embeddings(tower.name)[2] if tower.name in store.towers else None
        todo = [i for i in range(len(store)) if valid is None or not valid[i]]
        names = store.names
        for done, i in enumerate(todo, 1):
            path = os.path.join(root, names[i]) if root is not None and not os.path.isabs(names[i]) else names[i]
            try:
                img = load_image(path, None)
            except (ImageReadError, OSError, ValueError) as err:
                raise FeatureFileError(f"{display_name(store.path)}: cannot read image {display_name(names[i])!r} "
                                       f"for its embedding ({err}); pass the folder the names are relative to "
                                       "(--root)") from None
            store.write_embeddings([i], tower.name, tower.embed([img]))
            if progress and done % 50 == 0:
                log.info(f"embedded {done} of {len(todo)} images")
    return len(todo)


def index_embeddings_from_features(features: str | os.PathLike, index: str | os.PathLike) -> str:
    """Store a feature file's global embeddings in an index made from it (``/text``).

    Returns:
        One line for the user: what was stored.
    """
    info = read_info(index)
    with open_features(features) as coll:
        if tuple(coll.names) != tuple(info.names):
            raise PipelineError(f"{display_name(index)} was not made from {display_name(features)}: their images differ")
        tower, emb, valid = coll.embeddings()
        text = TextEmbeddings(tower, list(coll.names), emb, valid, os.path.abspath(coll.path))
    update_text(index, text)
    line = f"text search: {int(valid.sum())} global image embeddings ({tower}) stored in {display_name(index)}"
    missing = int((~valid).sum())
    if missing:
        line += f"; {missing} images have none and cannot be found by text"
    return line
