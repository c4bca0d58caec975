"""The shipped text model (lit.text.model, built by lit.text.factory): queries and the joint space."""

import os

import pytest
import torch
import torch.nn.functional as F

import lit
from lit.text import rank_images

PHOTOS = os.path.join(os.path.dirname(lit.__file__), "assets", "photos")
LONG = "the photo shows a very old stone church " * 60


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


def test_head_file_pt_and_safetensors_hold_the_same_head(tmp_path, text_model):
    import torch

    from lit.text.model import load_head, save_head

    head = text_model.head
    sha = save_head(tmp_path / "h.safetensors", head, tower="effl0", extra={"note": "x"})
    save_head(tmp_path / "h.pt", head, tower="effl0", extra={"note": "x"})
    (a, ca, ta), (b, cb, tb) = load_head(tmp_path / "h.safetensors", sha256=sha), load_head(tmp_path / "h.pt")
    assert ca == cb == head.cfg and ta == tb == "effl0" and a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)
    assert a["keys"].dtype == torch.float16
    with pytest.raises(ValueError, match="sha256"):
        load_head(tmp_path / "h.pt", sha256=sha)
    (tmp_path / "junk.safetensors").write_bytes(b"not a head")
    with pytest.raises(ValueError, match="not a readable text head|not a lit text head"):
        load_head(tmp_path / "junk.safetensors")
