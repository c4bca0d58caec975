"""The text head and its training (lit.text.head), and its file (lit.text.model)."""


import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lit.text import HeadConfig, TextHead, info_nce_loss, recall_at_k, train_head


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
