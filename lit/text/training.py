"""The recipe of the shipped text head: concept texts -> MiniLM -> keyed head, InfoNCE.

Used by ``weights/recipes/make_lit_text_effl0.py`` (the shipped head, all 1000 classes) and by
``benchmarks/text_search.py`` (the same recipe on 800 classes, evaluated on the 200 others).

Two recipes: :data:`GLOSS_RECIPE` (session 6: the glosses of the 1k classes only) and
:data:`RECIPE` with :data:`HIERARCHY` (shipped since session 7: the 1k glosses plus the lemmas
of the ImageNet-21k synsets, each paired with the 1k classes WordNet puts below it or its
parent, and a learned map of the class keys), chosen on a validation split of the training
classes and of the 21k synsets (``weights/lit-text-effl0.md``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .concepts import concept_texts
from .head import HeadConfig, TextHead, train_head

#: Session 6's recipe: 1k glosses only (kept as a row of ``benchmarks/text_search.py``).
GLOSS_RECIPE = HeadConfig(kind="keyed", epochs=20, lr=3e-4, weight_decay=0.05, batch_size=64, negatives=255)
#: The shipped recipe, with :data:`HIERARCHY` (chosen on a validation split, see the model card).
#: ``free_weight``, ``free_min_tokens``: for queries of 6 tokens or more the head's distribution is
#: ``p_trained^0.6 p_free^0.4`` (chosen on 4 validation folds of the non-test classes: the best mean
#: of gloss R@1 and R@5 with the short-query mAP within 0.005 of the trained map's; model card).
RECIPE = HeadConfig(kind="keyed", epochs=5, lr=1e-3, weight_decay=0.05, batch_size=256, negatives=255, key_metric=True,
                    free_weight=0.4, free_min_tokens=6)


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


def train_concept_head(concepts: ConceptEmbeddings, classes, cfg: HeadConfig = GLOSS_RECIPE,
                       eval_fn=None) -> tuple[TextHead, list[dict]]:
    """Train a keyed head on the glosses of ``classes`` (negatives: those classes)."""
    x, y = concepts.select(classes)
    return train_head(x, y, torch.zeros(0, cfg.out_dim), torch.as_tensor(list(classes)), cfg, eval_fn=eval_fn,
                      keys=concepts.keys)


@dataclass
class SynsetEmbeddings:
    """Sentence embeddings of the ImageNet-21k synset texts (the 1k classes left out).

    Shape:
        - embeddings: :math:`(N, 384)`; wnids, kinds: ``N`` entries.
    """

    embeddings: torch.Tensor
    wnids: list[str]
    kinds: list[str]


def synset_embeddings(encoder, exclude, cache: str | os.PathLike | None = None) -> SynsetEmbeddings:
    """Embed the lemmas and glosses of the 21k synsets not in ``exclude`` (cached in ``cache``)."""
    from .hierarchy import synset_texts

    if cache is not None and os.path.isfile(cache):
        raw = torch.load(cache, weights_only=True)
        return SynsetEmbeddings(raw["embeddings"], list(raw["wnids"]), list(raw["kinds"]))
    texts, wnids, kinds = synset_texts(exclude)
    emb, _ = encoder.embed(texts, batch_size=128)
    out = SynsetEmbeddings(emb.cpu(), wnids, kinds)
    if cache is not None:
        torch.save({"embeddings": out.embeddings, "wnids": out.wnids, "kinds": out.kinds}, cache)
    return out


@dataclass(frozen=True)
class HierarchyData:
    """Which 21k synset texts join the 1k glosses, and how much they weigh.

    Args:
        kinds: synset texts paired with their 1k classes as soft targets
            (:func:`lit.text.hierarchy.synset_targets`): ``"lemma"``, ``"definition"``.
        hop_decay: such a text's weight is ``hop_decay ** hops`` (hops up the hypernym graph
            to the ancestors whose 1k classes are its target; 0 for a synset above 1k classes).
        max_hops: synsets further than this from any 1k class give no soft-target text.
        max_targets: synsets with more target classes than this give none (too broad).
        own_keys: also pair each synset's gloss with its own key (the mean embedding of its
            lemmas) against the other synsets' keys: text-to-name pairs, no 1k class involved.
        own_weight: weight of those pairs.
        gloss_weight: weight of the 1k classes' own glosses (one-hot targets).
    """

    kinds: tuple[str, ...] = ("lemma",)
    hop_decay: float = 0.5
    max_hops: int = 1
    max_targets: int = 1000
    own_keys: bool = True
    own_weight: float = 1.0
    gloss_weight: float = 1.0


def synset_keys(synsets: SynsetEmbeddings) -> tuple[list[str], torch.Tensor]:
    """Key of each 21k synset: the normalised mean embedding of its lemmas; ``(wnids, keys (S, 384))``."""
    wnids = sorted(set(synsets.wnids))
    row = {w: i for i, w in enumerate(wnids)}
    lab = torch.tensor([row[w] for w in synsets.wnids], dtype=torch.long)
    lem = torch.tensor([k == "lemma" for k in synsets.kinds])
    keys = torch.zeros(len(wnids), synsets.embeddings.shape[1]).index_add_(0, lab[lem], synsets.embeddings[lem].float())
    return wnids, F.normalize(keys, dim=-1)


@dataclass
class TrainingSet:
    """Training pairs over the 1k classes followed by the 21k synsets (columns ``C + S``).

    Shape:
        - embeddings: :math:`(N, 384)`; targets: sparse :math:`(N, C + S)`; weights: :math:`(N,)`;
          keys: :math:`(C + S, 384)`; candidates: the columns negatives come from.
    """

    embeddings: torch.Tensor
    targets: torch.Tensor
    weights: torch.Tensor
    keys: torch.Tensor
    candidates: torch.Tensor


def hierarchy_training_set(concepts: ConceptEmbeddings, synsets: SynsetEmbeddings, classes, hypernyms,
                           class_wnids: list[str], data: HierarchyData = HierarchyData()) -> TrainingSet:
    """Training pairs: the glosses of ``classes`` (one-hot) and the 21k synset texts.

    A synset's soft target is its 1k classes within ``classes`` (:func:`lit.text.hierarchy.synset_targets`
    with ``allowed=classes``): classes outside ``classes`` (held out) are never a target or a
    negative, and the hyponyms of a held-out class give no soft-target text.
    """
    from .hierarchy import synset_targets

    x1, y1 = concepts.select(classes)
    num = concepts.keys.shape[0]
    wnids, skeys = synset_keys(synsets)
    col = {w: num + i for i, w in enumerate(wnids)}
    tg = synset_targets(hypernyms, class_wnids, wnids, allowed=classes)
    xs, rows, cols, vals, ws = [x1], [], [], [], []
    rows += list(range(len(x1)))
    cols += y1.tolist()
    vals += [1.0] * len(x1)
    ws += [data.gloss_weight] * len(x1)
    n = len(x1)
    keep = []
    for i, (wnid, kind) in enumerate(zip(synsets.wnids, synsets.kinds, strict=True)):
        if data.own_keys and kind == "definition":
            keep.append(i)
            rows.append(n)
            cols.append(col[wnid])
            vals.append(1.0)
            ws.append(data.own_weight)
            n += 1
        hit = tg.get(wnid)
        if kind in data.kinds and hit is not None and hit[1] <= data.max_hops and len(hit[0]) <= data.max_targets:
            keep.append(i)
            rows += [n] * len(hit[0])
            cols += hit[0]
            vals += [1.0 / len(hit[0])] * len(hit[0])
            ws.append(data.hop_decay ** hit[1])
            n += 1
    xs.append(synsets.embeddings[torch.tensor(keep, dtype=torch.long)].float())
    targets = torch.sparse_coo_tensor(torch.tensor([rows, cols]), torch.tensor(vals), (n, num + len(wnids)),
                                      check_invariants=True).coalesce()
    cand = torch.tensor(sorted(set(int(c) for c in classes)), dtype=torch.long)
    if data.own_keys:
        cand = torch.cat([cand, torch.arange(num, num + len(wnids))])
    return TrainingSet(torch.cat(xs), targets, torch.tensor(ws), torch.cat([concepts.keys.float(), skeys]), cand)


def train_hierarchy_head(train: TrainingSet, cfg: HeadConfig, num_classes: int = 1000, eval_fn=None) -> tuple[TextHead, list[dict]]:
    """Train a keyed head on a :class:`TrainingSet`; returns it over the first ``num_classes`` keys only."""
    head, history = train_head(train.embeddings, train.targets, torch.zeros(0, cfg.out_dim), train.candidates, cfg,
                               keys=train.keys, weights=train.weights, eval_fn=eval_fn)
    out = TextHead(cfg, train.keys[:num_classes])
    state = {k: v for k, v in head.state_dict().items() if k != "keys"}
    out.load_state_dict({**state, "keys": out.keys})
    return out.eval(), history


#: The 21k data of the shipped recipe.
HIERARCHY = HierarchyData(kinds=("lemma",), hop_decay=0.5, max_hops=1, own_keys=False, gloss_weight=3.0)


def imagenet_wnids(num_classes: int = 1000) -> list[str]:
    """WordNet ids of the ImageNet-1k classes, in class-index order."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    return [info.index_to_label_name(i) for i in range(num_classes)]


def train_recipe_head(concepts: ConceptEmbeddings, synsets: SynsetEmbeddings, hypernyms, classes,
                      cfg: HeadConfig = RECIPE, data: HierarchyData = HIERARCHY,
                      eval_fn=None) -> tuple[TextHead, list[dict]]:
    """The shipped recipe on the given training classes: 1k glosses + 21k lemmas with soft targets."""
    wnids = imagenet_wnids(concepts.keys.shape[0])
    return train_hierarchy_head(hierarchy_training_set(concepts, synsets, classes, hypernyms, wnids, data), cfg,
                                num_classes=len(wnids), eval_fn=eval_fn)
