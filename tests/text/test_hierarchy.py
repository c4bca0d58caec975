"""21k synsets -> soft 1k targets through WordNet hypernyms, and training on soft targets."""

import os

import pytest
import torch
import torch.nn.functional as F

from lit.text.head import (
    HeadConfig,
    TextHead,
    info_nce_loss,
    recall_at_k,
    soft_info_nce_loss,
    train_head,
)
from lit.text.hierarchy import WORDNET_NOUNS, read_noun_hypernyms, synset_targets, target_matrix

# a WordNet 3.0 data.noun excerpt in its own format (offset lex ss_type w_cnt words p_cnt ptrs | gloss);
# graph: animal <- dog <- {terrier <- toy_terrier, hound}; animal <- cat; hound also @i-points to pet
DATA = """  1 This software and database is being provided to you, the LICENSEE, by
  2 Princeton University under the following license.
00000001 05 n 01 animal 0 003 ~ 00000002 n 0000 ~ 00000005 n 0000 ~ 00000007 n 0000 | a living organism
00000002 05 n 02 dog 0 domestic_dog 0 003 @ 00000001 n 0000 ~ 00000003 n 0000 ~ 00000004 n 0000 | a canine
00000003 05 n 01 terrier 0 002 @ 00000002 n 0000 ~ 00000006 n 0000 | a small dog
00000004 05 n 01 hound 0 002 @ 00000002 n 0000 @i 00000007 n 0000 | a hunting dog
00000005 05 n 01 cat 0 001 @ 00000001 n 0000 | a feline
00000006 05 n 01 toy_terrier 0 002 @ 00000003 n 0000 + 00000005 v 0000 | a tiny terrier
00000007 05 n 01 pet 0 000 | a kept animal
"""


@pytest.fixture
def graph(tmp_path):
    p = tmp_path / "data.noun"
    p.write_text(DATA)
    return read_noun_hypernyms(p)


def test_read_noun_hypernyms_keeps_only_noun_hypernym_pointers(graph):
    assert graph == {"n00000001": [], "n00000002": ["n00000001"], "n00000003": ["n00000002"],
                     "n00000004": ["n00000002", "n00000007"], "n00000005": ["n00000001"],
                     "n00000006": ["n00000003"], "n00000007": []}


def test_bad_wordnet_file_names_file_and_line(tmp_path):
    p = tmp_path / "data.noun"
    p.write_text("00000001 05 n 01 animal 0 00x | broken\n")
    with pytest.raises(ValueError, match=r"data.noun:1: not a WordNet"):
        read_noun_hypernyms(p)
    with pytest.raises(FileNotFoundError, match="wordnet-base"):
        read_noun_hypernyms(tmp_path / "missing")


def test_synset_targets_below_then_nearest_ancestors(graph):
    classes = ["n00000003", "n00000004", "n00000005"]  # terrier, hound, cat are the "1k" classes
    t = synset_targets(graph, classes, ["n00000001", "n00000002", "n00000006", "n00000003", "n00000007", "n09999999"])
    assert t == {"n00000001": ([0, 1, 2], 0), "n00000002": ([0, 1], 0), "n00000006": ([0], 1),
                 "n00000003": ([0], 0), "n00000007": ([1], 0)}
    # terrier held out: its own hyponym (toy terrier) is left out, dog keeps only the hound
    held = synset_targets(graph, classes, ["n00000006", "n00000002", "n00000003", "n00000001"], allowed=[1, 2])
    assert held == {"n00000002": ([1], 0), "n00000001": ([1, 2], 0)}


def test_target_matrix_rows_are_uniform_over_their_classes():
    m = target_matrix([[0, 2], [1]], 4, weights=[1.0, 0.5])
    torch.testing.assert_close(m, torch.tensor([[0.5, 0, 0.5, 0], [0, 0.5, 0, 0]]))
    with pytest.raises(ValueError, match="no class"):
        target_matrix([[]], 3)


@pytest.mark.skipif(not os.path.isfile(WORDNET_NOUNS), reason="needs WordNet 3.0 (Debian wordnet-base)")
def test_real_wordnet_maps_known_synsets_to_imagenet_classes():
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    classes = [info.index_to_label_name(i) for i in range(1000)]
    t = synset_targets(read_noun_hypernyms(), classes, ["n02084071", "n03028079", "n02885233", "n02121808"])
    assert t["n02084071"] == (list(range(151, 269)), 0)  # dog: ImageNet's 118 dog classes, 151-268
    assert t["n03028079"] == ([497], 0)  # church building: the class 'church'
    assert t["n02885233"] == ([568, 617, 869], 1)  # box coat -> coat: fur coat, lab coat, trench coat
    assert t["n02121808"] == ([281, 282, 283, 284, 285], 0)  # domestic cat: tabby, tiger, Persian, Siamese, Egyptian


def test_soft_info_nce_with_one_hot_targets_is_info_nce():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(1, 9, generator=g)
    neg = torch.tensor([2, 5, 7])
    cand = torch.tensor([3, 2, 5, 7])
    soft = soft_info_nce_loss(logits, F.one_hot(torch.tensor([3]), 9).float(), cand)
    torch.testing.assert_close(soft, info_nce_loss(logits, torch.tensor([3]), neg))
    # a two-class target: the mean of the two log-probabilities; weights give a weighted mean
    t = torch.zeros(2, 9)
    t[0, [2, 5]] = 1.0
    t[1, 3] = 2.0
    lp = logits.repeat(2, 1)[:, cand].log_softmax(1)
    want0, want1 = -(lp[0, 1] + lp[0, 2]) / 2, -lp[1, 0]
    torch.testing.assert_close(soft_info_nce_loss(logits.repeat(2, 1), t, cand, torch.tensor([1.0, 3.0])),
                               (want0 + 3 * want1) / 4)
    with pytest.raises(ValueError, match="no target mass"):
        soft_info_nce_loss(logits, F.one_hot(torch.tensor([0]), 9).float(), cand)


def test_soft_target_training_lowers_loss_and_reaches_held_out_classes():
    # 1k-like classes in groups of 5; a "hypernym" text is the mean of its group's keys through a
    # distortion, and its soft target is the group's trained classes
    g = torch.Generator().manual_seed(0)
    c, d = 60, 32
    keys = F.normalize(torch.randn(c, d, generator=g), dim=-1)
    distort = torch.eye(d) + 2.0 * torch.randn(d, d, generator=g) / d ** 0.5
    labels = torch.arange(c).repeat_interleave(3)
    texts = F.normalize((keys[labels] + 0.15 * torch.randn(len(labels), d, generator=g)) @ distort, dim=-1)
    held = labels % 3 == 0
    trained_classes = torch.tensor([k for k in range(c) if k % 3])
    groups = torch.arange(c) // 5
    hyper = torch.stack([keys[groups == j].mean(0) for j in range(c // 5)])
    hyper_texts = F.normalize((hyper + 0.1 * torch.randn(hyper.shape, generator=g)) @ distort, dim=-1)
    targets = torch.cat([F.one_hot(labels[~held], c).float(),
                         ((groups[None] == torch.arange(c // 5)[:, None]) & (torch.arange(c) % 3 != 0)).float()])
    x = torch.cat([texts[~held], hyper_texts])
    cfg = HeadConfig(kind="keyed", in_dim=d, epochs=30, lr=1e-2, batch_size=32, negatives=16, weight_decay=0.0,
                     key_metric=True)

    def held_r1(head):
        return recall_at_k(head.logits(texts[held]), labels[held], ks=(1,))["r@1"]

    before = held_r1(TextHead(cfg, keys))
    head, hist = train_head(x, targets, torch.zeros(0, cfg.out_dim), trained_classes, cfg, keys=keys,
                            weights=torch.cat([torch.ones(int((~held).sum())), torch.full((c // 5,), 0.5)]),
                            eval_fn=lambda h: {"held": held_r1(h)})
    assert hist[-1]["loss"] < 0.5 * hist[0]["loss"]
    assert before < 0.6 and hist[-1]["held"] > before + 0.25
    with pytest.raises(ValueError, match="no mass on the training classes"):
        train_head(x[:1], F.one_hot(torch.tensor([0]), c).float(), torch.zeros(0, cfg.out_dim), trained_classes,
                   cfg, keys=keys)


def test_hierarchy_training_set_never_targets_held_out_classes(graph):
    from lit.text.training import (
        ConceptEmbeddings,
        HierarchyData,
        SynsetEmbeddings,
        hierarchy_training_set,
        train_hierarchy_head,
    )

    g = torch.Generator().manual_seed(0)
    d = 8
    classes = ["n00000003", "n00000004", "n00000005"]  # terrier, hound, cat
    concepts = ConceptEmbeddings(F.normalize(torch.randn(3, d, generator=g), dim=-1), torch.tensor([0, 1, 2]),
                                 ["definition"] * 3, F.normalize(torch.randn(3, d, generator=g), dim=-1))
    syn_wnids = ["n00000002", "n00000002", "n00000006", "n00000006", "n00000001"]  # dog x2, toy terrier x2, animal
    syn_kinds = ["lemma", "definition", "lemma", "definition", "lemma"]
    synsets = SynsetEmbeddings(F.normalize(torch.randn(5, d, generator=g), dim=-1), syn_wnids, syn_kinds)
    ts = hierarchy_training_set(concepts, synsets, [1, 2], graph, classes, HierarchyData(max_hops=3))
    dense = ts.targets.to_dense()
    # rows: the 2 trained glosses, dog's lemma -> hound, dog's gloss -> dog's own key (columns 3 + sorted
    # synsets: animal, dog, toy terrier), toy terrier's gloss -> its own key (its lemma, whose only class
    # is the held-out terrier, is left out), animal's lemma -> hound + cat
    assert dense.shape == (6, 3 + 3)
    assert dense[:, 0].abs().sum() == 0
    torch.testing.assert_close(dense[:2, :3], torch.tensor([[0.0, 1, 0], [0, 0, 1]]))
    torch.testing.assert_close(ts.embeddings[2:], synsets.embeddings[[0, 1, 3, 4]])
    torch.testing.assert_close(dense[2:], torch.tensor([[0, 1.0, 0, 0, 0, 0], [0, 0, 0, 0, 1, 0],
                                                        [0, 0, 0, 0, 0, 1], [0, 0.5, 0.5, 0, 0, 0]]))
    torch.testing.assert_close(ts.weights, torch.tensor([1.0, 1, 1, 1, 1, 1]))
    assert ts.candidates.tolist() == [1, 2, 3, 4, 5]
    torch.testing.assert_close(ts.keys[:3], concepts.keys)
    cfg = HeadConfig(kind="keyed", in_dim=d, epochs=2, batch_size=4, negatives=2, key_metric=True)
    head, _ = train_hierarchy_head(ts, cfg, num_classes=3)
    assert head.keys.shape == (3, d)
    big = TextHead(cfg, ts.keys)
    big.load_state_dict({**{k: v for k, v in head.state_dict().items() if k != "keys"}, "keys": big.keys})
    x = torch.randn(4, d, generator=g)
    torch.testing.assert_close(head.logits(x), big.logits(x)[:, :3])
    torch.testing.assert_close(head.logits(x, torch.tensor([2, 0])), head.logits(x)[:, [2, 0]])
