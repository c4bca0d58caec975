import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lit.errors import UsageError
from lit.models import TOKEN_NUM, TokenExtractor, fit_token_projection, token_extractor


def _projection(model, dim=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(dim, model.backbone.out_channels, generator=g), torch.randn(dim, generator=g)


def test_tokens_are_the_strongest_cells_at_their_centres(tiny_model):
    weight, bias = _projection(tiny_model)
    ex = TokenExtractor(tiny_model, weight, bias, scales=(1.0, 0.5), tokens_num=30)
    img = torch.rand(3, 96, 64, generator=torch.Generator().manual_seed(1))
    tok = ex.extract(img)
    # independently: the backbone's map at each scale, every cell with its centre in pixels
    rows = []
    with torch.no_grad():
        for s in (1.0, 0.5):
            x = tiny_model.normalize(img[None])
            if s != 1.0:
                x = F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False)
            f = tiny_model.backbone(x)[0]
            c, h, w = f.shape
            for i in range(h):
                for j in range(w):
                    rows.append((float(f[:, i, j].norm()), (j + 0.5) * 64 / w, (i + 0.5) * 96 / h, s, f[:, i, j]))
    rows.sort(key=lambda r: -r[0])
    best = rows[:30]
    assert len(tok) == 30
    assert torch.allclose(tok.strengths, torch.tensor([r[0] for r in best]), rtol=1e-4)
    assert torch.allclose(tok.positions, torch.tensor([[r[1], r[2]] for r in best]))
    assert torch.equal(tok.scales, torch.tensor([r[3] for r in best]))
    expect = F.normalize(F.normalize(torch.stack([r[4] for r in best]), dim=1) @ weight.T + bias, dim=1)
    assert torch.allclose(tok.descriptors, expect, atol=1e-4)
    assert torch.equal(tok.superfeature_ids, torch.arange(30))  # each token its own template


def test_an_image_with_fewer_cells_keeps_them_all(tiny_model):
    ex = TokenExtractor(tiny_model, *_projection(tiny_model), scales=(1.0,))
    tok = ex.extract(torch.rand(3, 32, 48))  # a 2x3 map at stride 16
    assert len(tok) == 6 and TOKEN_NUM > 6
    assert sorted(tok.positions.tolist()) == sorted([[8.0 + 16 * j, 8.0 + 16 * i] for i in range(2) for j in range(3)])


def test_the_fitted_projection_is_the_pca_of_the_normalised_strongest_cells(tiny_model):
    imgs = [torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    weight, bias = fit_token_projection(tiny_model, imgs, dim=4, scales=(1.0,), tokens_num=10)
    cells = []
    with torch.no_grad():
        for img in imgs:
            f = tiny_model.backbone(tiny_model.normalize(img[None]))[0].flatten(1).T
            cells.append(F.normalize(f[f.norm(dim=1).argsort(descending=True)[:10]], dim=1))
    x = torch.cat(cells).double().numpy()
    mean = x.mean(0)
    _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
    # the same directions up to sign, and the map centres the cells
    assert np.allclose(np.abs(weight.double().numpy() @ vt[:4].T), np.eye(4), atol=1e-4)
    assert np.allclose(weight.double().numpy() @ mean + bias.double().numpy(), 0, atol=1e-5)


def test_a_model_without_a_packaged_projection_gets_a_seeded_orthonormal_one(tiny_model):
    a, b = token_extractor(tiny_model), token_extractor(tiny_model)
    w = a.projection_weight
    assert torch.equal(w, b.projection_weight)
    assert torch.allclose(w @ w.T, torch.eye(len(w)), atol=1e-5)
    assert not a.projection_bias.any()


def test_lit_effl0_has_its_fitted_projection():
    import lit

    ex = token_extractor(lit.load_model("lit-effl0"))
    assert ex.projection_weight.shape == (64, 320) and ex.projection_bias.abs().sum() > 0
    assert ex.source == "lit-effl0 tokens"


def test_a_projection_of_another_width_is_refused(tiny_model):
    with pytest.raises(UsageError, match=f"{tiny_model.backbone.out_channels} channels"):
        TokenExtractor(tiny_model, torch.zeros(4, 7), torch.zeros(4))


def test_a_token_file_reads_back_and_resumes(tiny_model, tmp_path):
    from PIL import Image

    from lit.features import open_features
    from lit.pipeline import extract_to_file

    for i in range(3):
        Image.fromarray((np.random.default_rng(i).random((80, 96, 3)) * 255).astype(np.uint8)).save(tmp_path / f"{i}.png")
    paths = [str(tmp_path / f"{i}.png") for i in range(3)]
    ex = TokenExtractor(tiny_model, *_projection(tiny_model), tokens_num=25)
    out = tmp_path / "tokens.h5"
    assert extract_to_file(ex, paths[:2], out, progress=False).done == 2
    assert extract_to_file(ex, paths, out, progress=False).done == 1  # resumed: only the new one
    with open_features(out) as f:
        assert f.names == ["0.png", "1.png", "2.png"] and f.descriptor_dim == 8
        for i, p in enumerate(paths):
            expect = ex.extract(p)
            assert torch.allclose(f[i].descriptors, expect.descriptors, atol=1e-6)
            assert torch.equal(f[i].positions, expect.positions)
    # a super-feature file is another file: its extraction does not resume the token file
    from lit.errors import FeatureFileError

    with pytest.raises(FeatureFileError, match="another model or with other extraction settings"):
        extract_to_file(tiny_model, paths, out, progress=False)
