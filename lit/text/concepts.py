"""Concept texts for the ImageNet-1k classes (timm's ``ImageNetInfo``: lemmas and WordNet glosses).

With no image-caption pairs, these texts are the positive pairs the text head is trained on:
each text is paired with the class it names or defines (the image side of the pair is that
class's prototype in the frozen image tower).
"""

from __future__ import annotations

from dataclasses import dataclass

TEMPLATES = ("a photo of a {}", "a picture of the {}", "a {} in a photo", "a close-up photo of a {}", "a photo of many {}")


@dataclass(frozen=True)
class ConceptTexts:
    """Texts with the class index each one names.

    Fields:
        texts: the texts, ``(N,)``.
        labels: class index of each text, ``(N,)``.
        kinds: ``"lemma"``, ``"template"`` or ``"definition"`` for each text.
    """

    texts: tuple[str, ...]
    labels: tuple[int, ...]
    kinds: tuple[str, ...]


def class_lemmas(num_classes: int = 1000) -> list[list[str]]:
    """Lemmas (synonyms) of each ImageNet-1k class, most common first."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    return [[s.strip() for s in info.index_to_description(i).split(",") if s.strip()] for i in range(num_classes)]


def class_definitions(num_classes: int = 1000) -> list[str]:
    """WordNet gloss of each ImageNet-1k class (without its lemmas)."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    return [info.index_to_description(i, detailed=True).split(": ", 1)[-1].strip() for i in range(num_classes)]


def concept_texts(classes, definitions: bool = True, max_lemmas: int = 3) -> ConceptTexts:
    """Training texts of the given classes: lemmas, templated lemmas and (optionally) definitions."""
    lemmas, defs = class_lemmas(), class_definitions()
    texts, labels, kinds = [], [], []
    for c in classes:
        c = int(c)
        for j, lemma in enumerate(lemmas[c][:max_lemmas]):
            texts.append(lemma)
            labels.append(c)
            kinds.append("lemma")
            for t in (TEMPLATES if j < 2 else TEMPLATES[:1]):
                texts.append(t.format(lemma))
                labels.append(c)
                kinds.append("template")
        if definitions:
            texts.append(defs[c])
            labels.append(c)
            kinds.append("definition")
    return ConceptTexts(tuple(texts), tuple(labels), tuple(kinds))


def heldout_split(num_classes: int = 1000, every: int = 5) -> tuple[list[int], list[int]]:
    """(trained, held-out) class indices: every ``every``-th class is held out (index % every == 0)."""
    held = [c for c in range(num_classes) if c % every == 0]
    return [c for c in range(num_classes) if c % every], held
