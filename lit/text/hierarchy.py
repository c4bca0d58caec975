"""ImageNet-21k concepts as soft targets over the 1000 ImageNet-1k classes (WordNet hypernyms).

The text head can only be trained on (text, image-side target) pairs. The 1000 classes give
about 10k of them; the 21,843 ImageNet-21k synsets (timm ``ImageNetInfo``) give twice as many
concept texts, and WordNet's noun hypernym graph (Debian ``wordnet-base``,
``/usr/share/wordnet/data.noun``, WordNet 3.0 offsets = ImageNet wnids) says which 1k classes
a photo of each synset would be classified as:

- a synset above some 1k classes (``dog``): the 1k classes below it, uniformly;
- a synset below or beside them (``box coat``): walk up the hypernyms level by level to the
  first ancestors that have 1k classes below them (``coat``), and take those classes.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

import torch

WORDNET_NOUNS = "/usr/share/wordnet/data.noun"
INSTALL_HINT = "install WordNet 3.0 (Debian: apt-get install wordnet-base)"


def read_noun_hypernyms(path: str | os.PathLike = WORDNET_NOUNS) -> dict[str, list[str]]:
    """Hypernyms (``@`` and instance ``@i`` pointers) of every noun synset of a WordNet data file.

    Returns:
        ``{wnid: [hypernym wnid, ...]}`` with ImageNet-style ids (``"n"`` + 8-digit offset).

    Raises:
        FileNotFoundError: no such file (with the install hint).
        ValueError: a line that is not a WordNet data line (names the file and line).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no WordNet noun data file; {INSTALL_HINT}")
    graph: dict[str, list[str]] = {}
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            if line.startswith("  ") or not line.strip():  # licence header
                continue
            fields = line.split(" | ", 1)[0].split()
            try:
                offset, n_words = fields[0], int(fields[3], 16)
                p = 4 + 2 * n_words
                n_ptrs = int(fields[p])
                ptrs = fields[p + 1: p + 1 + 4 * n_ptrs]
                if len(offset) != 8 or not offset.isdigit() or len(ptrs) != 4 * n_ptrs:
                    raise ValueError
            except (IndexError, ValueError):
                raise ValueError(f"{path}:{lineno}: not a WordNet noun data line") from None
            graph["n" + offset] = [
                "n" + ptrs[j + 1] for j in range(0, len(ptrs), 4) if ptrs[j] in ("@", "@i") and ptrs[j + 2] == "n"
            ]
    return graph


def descendant_classes(hypernyms: Mapping[str, list[str]], classes: list[str]) -> dict[str, set[int]]:
    """For every synset with class synsets below it (itself included): the indices of those classes.

    Args:
        hypernyms: ``{wnid: [hypernym wnid, ...]}``.
        classes: the class wnids, in class-index order.
    """
    below: dict[str, set[int]] = {}
    for i, wnid in enumerate(classes):
        stack, seen = [wnid], {wnid}
        while stack:
            s = stack.pop()
            below.setdefault(s, set()).add(i)
            for h in hypernyms.get(s, ()):
                if h not in seen:
                    seen.add(h)
                    stack.append(h)
    return below


def synset_targets(hypernyms: Mapping[str, list[str]], classes: list[str], synsets: Iterable[str],
                   allowed: Iterable[int] | None = None) -> dict[str, tuple[list[int], int]]:
    """Target classes of each synset: the classes below it, else those below its nearest ancestors.

    Args:
        hypernyms: ``{wnid: [hypernym wnid, ...]}``.
        classes: the class wnids, in class-index order.
        synsets: the synsets to map.
        allowed: keep only these classes of each target (the training classes), after the
            walk over all classes: a synset whose target was only held-out classes (a held-out
            class's own hyponyms) is left out, so nothing of a held-out concept is trained on;
            ``None``: all.

    Returns:
        ``{wnid: (sorted class indices, hops)}`` with ``hops`` the number of hypernym steps up
        to the ancestors the classes hang from (0: the synset itself). Synsets with no target
        (not in the graph, or only classes outside ``allowed``) are left out.
    """
    ok = None if allowed is None else set(int(c) for c in allowed)
    below = descendant_classes(hypernyms, classes)
    out: dict[str, tuple[list[int], int]] = {}
    for s in synsets:
        if s not in hypernyms and s not in below:
            continue
        level, seen, hops = {s}, {s}, 0
        while level:
            found = set().union(*(below.get(x, set()) for x in level))
            if found:
                if ok is not None:
                    found &= ok
                if found:
                    out[s] = (sorted(found), hops)
                break
            nxt = {h for x in level for h in hypernyms.get(x, ()) if h not in seen}
            seen |= nxt
            level, hops = nxt, hops + 1
    return out


def target_matrix(targets: list[list[int]], num_classes: int, weights: list[float] | None = None) -> torch.Tensor:
    """Dense soft targets: row ``i`` is uniform over ``targets[i]`` (times ``weights[i]`` when given).

    Shape:
        - output: :math:`(N, C)`.
    """
    t = torch.zeros(len(targets), num_classes)
    for i, cls in enumerate(targets):
        if not cls:
            raise ValueError(f"target {i} has no class")
        t[i, cls] = (1.0 if weights is None else float(weights[i])) / len(cls)
    return t


def synset_texts(exclude: Iterable[str] = (), max_lemmas: int = 2) -> tuple[list[str], list[str], list[str]]:
    """Concept texts of the ImageNet-21k synsets (timm ``ImageNetInfo``): lemmas and WordNet glosses.

    Args:
        exclude: wnids to leave out (e.g. the 1k classes, whose texts come from
            :func:`lit.text.concepts.concept_texts`).
        max_lemmas: lemmas kept per synset, most common first.

    Returns:
        ``(texts, wnids, kinds)``, one entry per text; kinds ``"lemma"`` or ``"definition"``.
    """
    from timm.data import ImageNetInfo

    info = ImageNetInfo("imagenet-22k")
    skip = set(exclude)
    texts, wnids, kinds = [], [], []
    for i in range(info.num_classes()):
        wnid = info.index_to_label_name(i)
        if wnid in skip:
            continue
        lemmas = [s.strip() for s in info.index_to_description(i).split(",") if s.strip()]
        gloss = info.index_to_description(i, detailed=True).split(": ", 1)[-1].strip()
        for lemma in lemmas[:max_lemmas]:
            texts.append(lemma)
            wnids.append(wnid)
            kinds.append("lemma")
        if gloss:
            texts.append(gloss)
            wnids.append(wnid)
            kinds.append("definition")
    return texts, wnids, kinds
