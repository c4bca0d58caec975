"""Search by text (lit.text): the MiniLM forward, the head's training, queries, storage, CLI."""

import json
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import lit
from lit.text import (
    HeadConfig,
    TextHead,
    clean_queries,
    info_nce_loss,
    rank_images,
    recall_at_k,
    train_head,
)

PHOTOS = os.path.join(os.path.dirname(lit.__file__), "assets", "photos")
LONG = "the photo shows a very old stone church " * 60


@pytest.fixture(scope="module")
def minilm():
    from lit.text.minilm import load_minilm

    return load_minilm()


@pytest.fixture(scope="module")
def text_model():
    return lit.text.load_text_model()


def test_minilm_matches_sentence_transformers_within_1e5(minilm):
    from sentence_transformers import SentenceTransformer

    from lit.text.minilm import minilm_dir

    texts = ["a church at night", "Eine Kirche bei Nacht", "教堂的夜景", "x", LONG, "The quick brown fox, jumping!"]
    ours, truncated = minilm.embed(texts, batch_size=4)
    ref = SentenceTransformer(str(minilm_dir()), device="cpu").encode(texts, convert_to_tensor=True)
    assert (ours - ref.cpu()).abs().max() < 1e-5
    assert truncated.tolist() == [False, False, False, False, True, False]


def test_info_nce_matches_a_per_query_loop():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 7, generator=g)
    pos = torch.tensor([0, 3, 5, 6])
    neg = torch.tensor([1, 3, 6])
    want = []
    for i in range(4):
        cols = [int(pos[i])] + [int(c) for c in neg if int(c) != int(pos[i])]
        row = logits[i, cols]
        want.append(-(row[0] - torch.logsumexp(row, 0)))
    torch.testing.assert_close(info_nce_loss(logits, pos, neg), torch.stack(want).mean())


def test_short_training_lowers_loss_and_raises_heldout_r1():
    # class keys; the texts of a class are its key seen through an unknown linear distortion
    g = torch.Generator().manual_seed(0)
    c, d = 60, 32
    keys = F.normalize(torch.randn(c, d, generator=g), dim=-1)
    distort = torch.eye(d) + 2.0 * torch.randn(d, d, generator=g) / d ** 0.5
    labels = torch.arange(c).repeat_interleave(4)
    texts = F.normalize((keys[labels] + 0.15 * torch.randn(len(labels), d, generator=g)) @ distort, dim=-1)
    train = labels % 3 != 0  # a third of the classes are never trained on
    cfg = HeadConfig(kind="keyed", in_dim=d, epochs=30, lr=1e-2, batch_size=32, negatives=16, weight_decay=0.0)

    def held_r1(head):
        return recall_at_k(head.logits(texts[~train]), labels[~train], ks=(1,))["r@1"]

    before = held_r1(TextHead(cfg, keys))
    head, hist = train_head(texts[train], labels[train], torch.zeros(0, cfg.out_dim),
                            torch.unique(labels[train]), cfg, keys=keys, eval_fn=lambda h: {"held": held_r1(h)})
    assert hist[-1]["loss"] < 0.5 * hist[0]["loss"]
    assert before < 0.6 and hist[-1]["held"] > before + 0.25


def test_free_weight_is_the_normalised_product_of_the_two_maps(tmp_path):
    # p = normalise(p_trained^(1 - w) * p_free^w), recomputed in float64 numpy from the parameters
    g = torch.Generator().manual_seed(3)
    c, d, w = 12, 16, 0.4
    keys = torch.randn(c, d, generator=g)
    cfg = HeadConfig(kind="keyed", in_dim=d, key_metric=True, free_weight=w, temperature=0.07)
    head = TextHead(cfg, keys)
    with torch.no_grad():
        head.metric.weight.copy_(0.3 * torch.randn(d, d, generator=g))
        head.key_map.weight.copy_(0.3 * torch.randn(d, d, generator=g))
    x = torch.randn(5, d, generator=g)
    xn, kn = x.double().numpy(), keys.double().numpy()
    kn = kn / np.linalg.norm(kn, axis=1, keepdims=True)
    q = xn + xn @ head.metric.weight.detach().double().numpy().T
    t = kn + kn @ head.key_map.weight.detach().double().numpy().T
    cos_t = (q / np.linalg.norm(q, axis=1, keepdims=True)) @ (t / np.linalg.norm(t, axis=1, keepdims=True)).T
    cos_f = (xn / np.linalg.norm(xn, axis=1, keepdims=True)) @ kn.T

    def softmax(z):
        e = np.exp(z - z.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    mix = softmax(cos_t / 0.07) ** (1 - w) * softmax(cos_f / 0.05) ** w
    want = mix / mix.sum(1, keepdims=True)
    with torch.no_grad():
        np.testing.assert_allclose(head.class_weights(x).double().numpy(), want, rtol=1e-5, atol=1e-7)
        # the ends: w = 0 is the trained map alone, w = 1 the training-free map alone
        for end, z in ((0.0, cos_t / 0.07), (1.0, cos_f / 0.05)):
            h = TextHead(HeadConfig(**{**cfg.to_dict(), "free_weight": end}), keys)
            h.load_state_dict(head.state_dict())
            np.testing.assert_allclose(h.class_weights(x).double().numpy(), softmax(z), rtol=1e-5, atol=1e-7)
    # the weight travels in the head file's config
    from lit.text.model import load_head, save_head

    save_head(tmp_path / "h.pt", head, tower="effl0")
    assert load_head(tmp_path / "h.pt")[1].free_weight == w
    # a token gate: the mixture for queries of >= 4 tokens, the trained map for the others
    gated = TextHead(HeadConfig(**{**cfg.to_dict(), "free_min_tokens": 4}), keys)
    gated.load_state_dict(head.state_dict())
    tokens = torch.tensor([1, 4, 3, 9, 5])
    with torch.no_grad():
        got = gated.class_weights(x, tokens).double().numpy()
    long = tokens.numpy() >= 4
    np.testing.assert_allclose(got[long], want[long], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(got[~long], softmax(cos_t / 0.07)[~long], rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="token counts"):
        gated.logits(x)
    with pytest.raises(ValueError, match="free_weight"):
        TextHead(HeadConfig(kind="keyed", in_dim=d, free_weight=1.5), keys)
    with pytest.raises(ValueError, match="keyed"):
        TextHead(HeadConfig(kind="linear", in_dim=d, out_dim=8, free_weight=0.2), prototypes=torch.randn(c, 8))


def test_shipped_head_mixes_in_the_training_free_map(text_model):
    from lit.text.training import RECIPE

    head = text_model.head
    assert (head.cfg.free_weight, head.cfg.free_min_tokens) == (RECIPE.free_weight, RECIPE.free_min_tokens) == (0.4, 6)
    # a short query gets the trained map alone, a definition (>= 6 tokens) the mixture
    texts = ["a church at night", "a place of worship with a tall spire and bells rung on sundays"]
    assert text_model.encoder.token_counts(texts).tolist() == [4, 14]
    m, _ = text_model.encoder.embed(texts)
    with torch.no_grad():
        mixed = ((1 - RECIPE.free_weight) * head.trained_logits(m).log_softmax(1)
                 + RECIPE.free_weight * torch.log_softmax(F.normalize(m, dim=-1) @ head.keys.T / 0.05, dim=1))
        want = torch.cat([head.trained_logits(m[:1]), mixed[1:]])
        torch.testing.assert_close(text_model.encode(texts)[0], F.normalize(torch.sqrt(torch.softmax(want, 1)), dim=-1))


def test_empty_and_whitespace_queries_raise():
    for bad in ([""], ["   \t\n"], []):
        with pytest.raises(ValueError, match="empty|no text query"):
            clean_queries(bad)
    assert clean_queries(["  a   church \n at night "]) == (["a church at night"], [])


def test_non_latin_query_gets_a_note_and_still_ranks(text_model):
    q = text_model.embed_texts(["教堂的夜景", "a church"])
    assert len(q.notes) == 1 and "English-only" in q.notes[0] and "query 1" in q.notes[0]
    assert torch.allclose(q.embeddings.norm(dim=1), torch.ones(2), atol=1e-5)


def test_long_query_is_truncated_with_a_note(text_model):
    q = text_model.embed_texts([LONG, "a church"])
    assert any("query 1" in n and "256 tokens" in n for n in q.notes)
    # only the beginning counts: the cut text embeds the same as the whole one
    cut = text_model.encoder.tokenizer.decode(text_model.encoder.tokenize([LONG]).input_ids[0, 1:-1].tolist())
    torch.testing.assert_close(text_model.embed_texts([cut]).embeddings[0], q.embeddings[0], atol=1e-5, rtol=0)


def test_joint_space_finds_the_cat_and_the_coffee(text_model):
    from skimage import data

    photos = [torch.from_numpy(a).permute(2, 0, 1).float() / 255 for a in (data.chelsea(), data.coffee(), data.rocket())]
    photos.append(lit.load_image(os.path.join(PHOTOS, "sacre_coeur", "sacre_coeur1.jpg"), 320))
    image = text_model.image_space(text_model.image_tower.embed(photos))
    q = text_model.embed_texts(["a cat", "a cup of coffee", "a rocket", "a church"]).embeddings
    ranks, scores = rank_images(q, image, topk=2)
    assert ranks[:, 0].tolist() == [0, 1, 2, 3]
    # scores are the dot products of the joint-space vectors, recomputed here
    torch.testing.assert_close(scores[:, 0], (q * image[ranks[:, 0]]).sum(1))
    valid = torch.tensor([False, True, True, True])
    assert 0 not in rank_images(q, image, valid)[0].flatten().tolist()


def run(*args, ok=True):
    proc = subprocess.run([sys.executable, "-m", "lit", *map(str, args)], capture_output=True, text=True, timeout=300)
    if ok:
        assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory):
    from skimage import data

    d = tmp_path_factory.mktemp("photos")
    Image.fromarray(data.chelsea()).save(d / "cat.png")
    Image.fromarray(data.coffee()).save(d / "coffee.png")
    for name in ("sacre_coeur1.jpg", "sacre_coeur2.jpg"):
        Image.open(os.path.join(PHOTOS, "sacre_coeur", name)).save(d / name)
    return d


def test_cli_text_search_round_trip(tmp_path, photo_dir, text_model):
    feats, index = tmp_path / "f.h5", tmp_path / "i.h5"
    run("extract", photo_dir, "--out", feats, "--scales", "1", "--image-size", "256", "--device", "cpu", "--quiet")
    with h5py.File(feats) as h5:
        assert h5["global/effl0/valid"][:4].tolist() == [1, 1, 1, 1]
    assert "4 global image embeddings" in run("index", feats, "--out", index, "--codebook-size", "16", "--device", "cpu").stderr
    queries = tmp_path / "q.txt"
    queries.write_text("a cat\n\n# comment\na cup of coffee\n")
    out = tmp_path / "r.json"
    run("search", index, "--text", "a church", "--text-file", queries, "--json", out, "--topk", "2",
        "--csv", tmp_path / "r.csv", "--pairs", tmp_path / "p.txt", "--plot", tmp_path / "r.png", "--db-root", photo_dir)
    res = json.loads(out.read_text())["queries"]  # lit.pipeline.write_json: {"db_root", "query_root", "queries"}
    assert [r["query"] for r in res] == ["a church", "a cat", "a cup of coffee"]
    assert [sorted(h) for h in res[0]["results"]] == [["name", "rank", "score"]] * 2
    assert res[0]["results"][0]["name"].startswith("sacre_coeur")
    assert [r["results"][0]["name"] for r in res[1:]] == ["cat.png", "coffee.png"]
    # the same search through the Python API
    api, _ = lit.text.search_index_by_text(index, ["a church", "a cat", "a cup of coffee"], text_model, topk=2)
    assert [[h["name"] for h in r["results"]] for r in api] == [[h["name"] for h in r["results"]] for r in res]
    np.testing.assert_allclose([h["score"] for r in api for h in r["results"]],
                               [h["score"] for r in res for h in r["results"]], rtol=1e-5)
    assert (tmp_path / "p.txt").read_text().splitlines()[0] == f"a church {res[0]['results'][0]['name']}"
    assert Image.open(tmp_path / "r_001.png").size[0] > 200  # one figure per query
    bad = run("search", index, "--text", "  ", ok=False)
    assert bad.returncode == 2 and "empty" in bad.stderr


def test_index_without_embeddings_says_how_to_add_them(tmp_path, photo_dir):
    feats, index = tmp_path / "f.h5", tmp_path / "i.h5"
    run("extract", photo_dir, "--out", feats, "--scales", "1", "--image-size", "256", "--device", "cpu", "--quiet",
        "--text-model", "none")
    assert "lit text embed" in run("index", feats, "--out", index, "--codebook-size", "16", "--device", "cpu").stderr
    bad = run("search", index, "--text", "a cat", ok=False)
    assert bad.returncode == 2 and "lit text embed" in bad.stderr
    run("text", "embed", feats, "--root", photo_dir, "--index", index, "--quiet")
    res = run("search", index, "--text", "a cat", "--topk", "1").stdout
    assert "cat.png" in res


def test_open_clip_plumbing_with_random_weights(tmp_path):
    pytest.importorskip("open_clip", reason="open_clip_torch is an optional extra (lit[clip])")
    from lit.text.clip import parse_name

    with pytest.raises(ValueError, match="open_clip:ARCH:TAG"):
        parse_name("open_clip:ViT-B-32")
    model = lit.text.load_text_model("open_clip:ViT-B-32:none")  # random weights, no download
    photos = [torch.rand(3, 100, 150), torch.rand(3, 240, 200)]
    image = model.image_space(model.image_tower.embed(photos))
    assert image.shape == (2, 512)
    q = model.embed_texts(["a church", "word " * 100])
    assert q.embeddings.shape == (2, 512) and any("query 2" in n for n in q.notes)
    # the text side is CLIP's own encode_text, normalised
    tok = model.tokenizer(["a church"])
    torch.testing.assert_close(q.embeddings[0], F.normalize(model.clip.encode_text(tok), dim=-1)[0])
    # and a whole round trip through the storage of an index
    from lit.asmk import ASMK
    from lit.index_file import IndexInfo, TextEmbeddings, write_index

    db = ASMK(np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32))
    db.add(np.ones((2, 4), np.float32), np.array([0, 1]))
    index = tmp_path / "i.h5"
    emb = model.image_tower.embed(photos).numpy()
    write_index(index, db, IndexInfo(names=("a.jpg", "b.jpg")),
                text=TextEmbeddings(model.tower_name, ["a.jpg", "b.jpg"], emb, np.ones(2, bool)))
    res, _ = lit.text.search_index_by_text(index, ["a church"], model, topk=2)
    expected = (q.embeddings[:1] @ image.T)[0]
    assert [h["name"] for h in res[0]["results"]] == [["a.jpg", "b.jpg"][i] for i in expected.argsort(descending=True)]
