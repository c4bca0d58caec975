"""open_clip towers (lit.text.clip), with random weights."""


import numpy as np
import pytest
import torch
import torch.nn.functional as F

import lit


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
