"""Calibrated text scores: standard deviations above the scores of meaningless texts, per photo."""

import torch

from lit.text.calibration import calibrate, reference_scores, reference_texts


class _Model:
    """A text model whose meaningless texts spread evenly over 4 classes."""

    name = "stub"

    def encode(self, texts):
        g = torch.Generator().manual_seed(len(texts))
        p = torch.full((len(texts), 4), 0.25) + 0.01 * torch.rand(len(texts), 4, generator=g)
        return (p / p.sum(1, keepdim=True)).sqrt(), torch.zeros(len(texts), dtype=torch.bool)


def test_reference_texts_are_fixed_and_meaningless():
    texts = reference_texts(50)
    assert texts == reference_texts(50) and len(set(texts)) == 50
    assert all(t.replace(" ", "").isalpha() and t == t.lower() for t in texts)


def test_calibrated_score_is_per_photo_standardised():
    ref = torch.tensor([[0.1, 0.5], [0.3, 0.7], [0.2, 0.6]])
    z = calibrate(torch.tensor([[0.4, 0.6]]), ref)
    torch.testing.assert_close(z, torch.tensor([[2.0, 0.0]]))


def test_a_peaked_query_beats_a_flat_one_that_has_the_higher_raw_score():
    photos = torch.tensor([[0.9, 0.1, 0.0, 0.0], [0.1, 0.1, 0.4, 0.4]]).sqrt()
    flat = torch.full((1, 4), 0.25).sqrt()            # gibberish: overlaps every photo
    peaked = torch.tensor([[1.0, 0.0, 0.0, 0.0]])      # "a cat": the first photo only
    raw_flat, raw_peaked = flat @ photos.T, peaked @ photos.T
    assert raw_flat[0, 0] > raw_peaked[0, 1]  # raw: gibberish on photo 1 outranks the wrong photo 2
    ref = reference_scores(_Model(), photos, n=64)
    z_flat, z_peaked = calibrate(raw_flat, ref), calibrate(raw_peaked, ref)
    assert z_peaked[0, 0] > 3 and z_flat.max() < z_peaked[0, 0]
