import math

import numpy as np
import pytest
import torch

from lit.asmk import ASMK
from lit.index_file import IndexInfo
from lit.matching import MatchRule
from lit.pipeline import Reranker, RerankSettings, search
from lit.pipeline.rerank import MIN_SUPPORT, VERIFY_FLOOR, PairCheck, verification_rule
from lit.types import LocalFeatures

PHOTOS = "lit/assets/photos"


# ---------------------------------------------------------------- real photos, lit-effl0
@pytest.fixture(scope="module")
def effl0():
    import lit

    torch.manual_seed(0)
    return lit.load_model("lit-effl0")


def _warp(img, angle_deg, scale, shear=0.0):
    import kornia

    h, w = img.shape[1:]
    a = math.radians(angle_deg)
    t = torch.tensor([[scale * math.cos(a), -scale * math.sin(a), 0.0], [scale * math.sin(a), scale * math.cos(a), 0.0]])
    t[0, 1] += shear
    c = torch.tensor([w / 2, h / 2])
    t[:, 2] = c - t[:, :2] @ c  # about the centre: the place stays in the picture
    return kornia.geometry.transform.warp_affine(img[None], t[None], (h, w), align_corners=False)[0], t


@pytest.mark.parametrize("model,shear", [("similarity", 0.0), ("affine", 0.15)])
def test_verification_finds_the_transformation_of_a_warped_photo(effl0, model, shear):
    from lit._image import load_image

    img = load_image(f"{PHOTOS}/sacre_coeur/sacre_coeur1.jpg", 512)
    warped, true = _warp(img, 12, 0.8, shear)
    fa, fb = effl0.extract(img), effl0.extract(warped)
    check = Reranker([fb], effl0.match_rule(), RerankSettings(model=model)).verify(fa, [0])[0]
    # true matches: the warp takes the query centroid to the candidate's (within the inlier distance)
    src, dst = fa.positions[check.query_idx], fb.positions[check.cand_idx]
    true_match = (src @ true[:, :2].T + true[:, 2] - dst).norm(dim=1) <= RerankSettings().threshold * 512
    assert true_match.sum() >= 20
    assert (check.inliers & true_match).sum() >= 0.9 * true_match.sum()
    # attention centroids are coarse (weighted means of an attention map): the transformation is
    # found within 10 % (similarity) or 15 % (affine) of the image size at the corners
    h, w = img.shape[1:]
    corners = torch.tensor([[0.0, 0.0], [w, 0.0], [0.0, h], [w, h]])
    err = (corners @ check.transform[:, :2].T + check.transform[:, 2] - (corners @ true[:, :2].T + true[:, 2])).norm(dim=1)
    assert err.max() <= (0.10 if model == "similarity" else 0.15) * max(h, w)
    if model == "similarity":
        angle = math.degrees(math.atan2(check.transform[1, 0], check.transform[0, 0]))
        scale = float(torch.linalg.det(check.transform[:, :2]).sqrt())
        assert abs(angle - 12) <= 3 and abs(scale / 0.8 - 1) <= 0.12


def test_verification_rejects_unrelated_photos(effl0):
    from lit._image import load_image

    street = effl0.extract(load_image(f"{PHOTOS}/street/DSC_0410.JPG", 512))
    others = [effl0.extract(load_image(f"{PHOTOS}/{p}", 512)) for p in ("warsaw/01.jpg", "zanky/01.jpg")]
    checks = Reranker(others, effl0.match_rule()).verify(street, [0, 1])
    assert all(c.support < MIN_SUPPORT for c in checks)


def test_support_counts_a_template_matched_at_several_scales_once():
    check = PairCheck(torch.arange(5), torch.arange(5), torch.tensor([True, True, True, True, False]), torch.eye(2, 3),
                      torch.tensor([3, 3, 7, 3, 9]))
    assert check.num_inliers == 4 and check.support == 2
    assert check._replace(query_templates=None).support == 4


def test_tentative_matches_are_mutual_neighbours_above_the_floor_without_the_background_test():
    bank = torch.randn(6, 16)
    effl0_like = MatchRule(None, 0.1, bank)
    assert verification_rule(effl0_like) == MatchRule(VERIFY_FLOOR) and verification_rule(effl0_like).background is None
    kept = verification_rule(effl0_like, "model", "model")
    assert (kept.threshold, kept.margin) == (None, 0.1) and kept.background is bank
    assert verification_rule(MatchRule(0.9), "model").threshold == 0.9
    assert verification_rule(MatchRule(0.9)).threshold == VERIFY_FLOOR


# ---------------------------------------------------------------- synthetic features
def _scene(n_images=12, k=24, dim=16, seed=0):
    """Feature sets of ``n_images`` images: pairs (2i, 2i+1) see the same place, the second
    moved by a similarity; descriptors of the same place alike."""
    g = torch.Generator().manual_seed(seed)
    feats = []
    for _ in range(0, n_images, 2):
        desc = torch.randn(k, dim, generator=g)
        pos = torch.rand(k, 2, generator=g) * 400
        feats.append(LocalFeatures(desc, torch.ones(k), torch.ones(k), torch.arange(k), pos))
        moved = pos @ torch.tensor([[0.9, -0.2], [0.2, 0.9]]).T + 30
        feats.append(LocalFeatures(desc + 0.2 * torch.randn(k, dim, generator=g), torch.ones(k), torch.ones(k),
                                   torch.arange(k), moved))
    return feats


def _index(feats, seed=0):
    desc = torch.cat([f.descriptors for f in feats]).numpy()
    ids = np.concatenate([np.full(len(f), i) for i, f in enumerate(feats)])
    index = ASMK.train(desc, size=8, seed=seed, iterations=5)
    index.add(desc, ids)
    return index, IndexInfo(names=tuple(f"img{i:02d}" for i in range(len(feats))))


def test_reranking_moves_verified_images_up_and_leaves_ranks_below_n_untouched():
    feats = _scene()
    r = Reranker(feats, MatchRule(0.8), RerankSettings(threshold=0.05, image_size=512))
    ids = list(range(2, 12)) + [1]  # the true partner of image 0 (1) last
    scores = [1.0 - 0.01 * i for i in range(len(ids))]
    for top in (3, 5):
        new, new_scores, inliers, checks = r.rerank(feats[0], ids, scores, top)
        assert new[top:] == ids[top:] and new_scores[top:] == scores[top:]
        assert all(k is None for k in inliers[top:]) and len(checks) == top
        assert sorted(new[:top]) == sorted(ids[:top])
    new, new_scores, inliers, _ = r.rerank(feats[0], ids, scores, len(ids))
    assert new[0] == 1 and inliers[0] >= MIN_SUPPORT and new_scores[0] == pytest.approx(inliers[0] + scores[-1])
    assert new[1:] == ids[:-1] and new_scores[1:] == scores[:-1]  # unverified: ASMK order and score


def test_search_with_rerank_zero_equals_plain_search_exactly():
    feats = _scene()
    index, info = _index(feats)
    names = [f"q{i}" for i in range(len(feats))]
    plain = search(index, info, feats, names, topk=5)
    r = Reranker(feats, MatchRule(0.8), RerankSettings(threshold=0.05, image_size=512))
    assert search(index, info, feats, names, topk=5, rerank=0, reranker=r) == plain
    assert search(index, info, feats, names, topk=5, rerank=0, expand=0) == plain
    reranked = search(index, info, feats, list(info.names), topk=None, rerank=6, reranker=r, exclude_self=True)
    assert [h.name for h in reranked[0].hits][0] == "img01" and reranked[0].hits[0].support >= MIN_SUPPORT


def test_expansion_without_a_verified_neighbour_equals_no_expansion():
    feats = _scene()
    index, info = _index(feats)
    strict = Reranker(feats, MatchRule(0.8), RerankSettings(threshold=0.05, image_size=512, min_support=1000))
    names = list(info.names)  # the database images as queries, themselves left out
    a = search(index, info, feats, names, topk=None, rerank=6, expand=2, reranker=strict, exclude_self=True)
    b = search(index, info, feats, names, topk=None, rerank=6, expand=0, reranker=strict, exclude_self=True)
    assert a == b
    loose = Reranker(feats, MatchRule(0.8), RerankSettings(threshold=0.05, image_size=512))
    c = search(index, info, feats, names, topk=None, rerank=6, expand=1, reranker=loose, exclude_self=True)
    assert [h.name for h in c[0].hits][0] == "img01"  # expanded and verified again: the partner stays first


def test_search_refuses_reranking_without_a_reranker():
    feats = _scene(4)
    index, info = _index(feats)
    with pytest.raises(ValueError, match="reranker"):
        search(index, info, feats, ["a", "b", "c", "d"], rerank=3)
    with pytest.raises(ValueError, match="rerank"):
        search(index, info, feats, ["a", "b", "c", "d"], rerank=-1)


# ---------------------------------------------------------------- verification by local tokens
@pytest.fixture(scope="module")
def effl0_tokens(effl0):
    from lit.models import token_extractor

    return token_extractor(effl0)


@pytest.mark.parametrize("model,shear", [("similarity", 0.0), ("affine", 0.15)])
def test_token_verification_finds_the_transformation_of_a_warped_photo(effl0_tokens, model, shear):
    from lit._image import load_image

    img = load_image(f"{PHOTOS}/sacre_coeur/sacre_coeur1.jpg", 512)
    warped, true = _warp(img, 12, 0.8, shear)
    ta, tb = effl0_tokens.extract(img), effl0_tokens.extract(warped)
    settings = RerankSettings.tokens(model=model)
    check = Reranker([tb], MatchRule(None), settings).verify(ta, [0])[0]
    src, dst = ta.positions[check.query_idx], tb.positions[check.cand_idx]
    true_match = (src @ true[:, :2].T + true[:, 2] - dst).norm(dim=1) <= settings.threshold * 512
    assert true_match.sum() >= 100
    assert (check.inliers & true_match).sum() >= 0.9 * true_match.sum()
    assert check.support == check.num_inliers >= settings.min_support  # each token its own template
    # cell centres are 16 px apart: the transformation is found within 4 % of the image size at
    # the corners (the super-features' centroids: 10 %)
    h, w = img.shape[1:]
    corners = torch.tensor([[0.0, 0.0], [w, 0.0], [0.0, h], [w, h]])
    err = (corners @ check.transform[:, :2].T + check.transform[:, 2] - (corners @ true[:, :2].T + true[:, 2])).norm(dim=1)
    assert err.max() <= 0.04 * max(h, w)


def test_token_verification_rejects_unrelated_photos(effl0_tokens):
    street = effl0_tokens.extract(f"{PHOTOS}/street/DSC_0410.JPG")
    unrelated = ("warsaw/01.jpg", "zanky/01.jpg", "terrace/terrace0.jpg", "sacre_coeur/sacre_coeur1.jpg",
                 "charlottenburg/01.jpg")
    others = [effl0_tokens.extract(f"{PHOTOS}/{p}") for p in unrelated]
    pair = effl0_tokens.extract(f"{PHOTOS}/street/DSC_0411.JPG")
    checks = Reranker(others + [pair], MatchRule(None), RerankSettings.tokens()).verify(street, list(range(6)))
    # measured: 6, 0, 4, 2, 4 inliers against 347 for the street's other photo
    assert all(c.support < RerankSettings.tokens().min_support for c in checks[:5])
    assert checks[5].support >= 30 * RerankSettings.tokens().min_support


def test_search_verifies_the_tokens_of_the_queries_it_is_given():
    feats = _scene()
    index, info = _index(feats)
    names = list(info.names)
    r = Reranker(feats, MatchRule(0.8), RerankSettings(threshold=0.05, image_size=512))
    # verification features that are the super-features themselves: the same result
    same = search(index, info, feats, names, topk=None, rerank=6, reranker=r, exclude_self=True, verify_queries=feats)
    assert same == search(index, info, feats, names, topk=None, rerank=6, reranker=r, exclude_self=True)
    # the verification features of query 0 swapped for those of image 5: image 5 itself is verified first
    swapped = [feats[5]] + feats[1:]
    res = search(index, info, feats, names, topk=None, rerank=len(feats), reranker=r, exclude_self=True,
                 verify_queries=swapped)
    assert res[0].hits[0].name == "img05" and res[0].hits[0].support >= MIN_SUPPORT
    with pytest.raises(ValueError, match="expansion"):
        search(index, info, feats, names, rerank=6, expand=1, reranker=r, verify_queries=feats)
    with pytest.raises(ValueError, match="verification features"):
        search(index, info, feats, names, rerank=6, reranker=r, verify_queries=feats[:2])
