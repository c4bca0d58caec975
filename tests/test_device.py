"""Device correctness on the CPU: lit's device paths under a fake accelerator, and the
device mix-ups found earlier, each with a test that fails on code that has them.

The fake accelerator (``tests/device_mixup.py``, the ``fake_device`` fixture) keeps real
data on the CPU but marks every tensor that was moved to (or created on, or computed from)
the "device"; a ``TorchFunctionMode`` raises where CUDA would fail.

What it catches: an op mixing device tensors with host tensors of one or more dimensions
(tensors created without ``device=`` meeting device data, results not moved back), and
``.numpy()`` / ``np.asarray`` of device tensors (results must cross through ``.cpu()``),
a model moved to the device inside ``inference_mode`` (its copies are inference tensors),
and it counts host syncs (``.item()``, ``float(t)``...). Results on the fake device are
compared with the CPU path, so a wrong branch for non-CPU devices shows too.

What it cannot catch: anything that needs a GPU to run — CUDA kernels and their numerics
(TF32, bf16), ``torch.cuda`` calls (RNG states, ``synchronize``, streams), pinned memory,
NCCL, ``torch.compile``, races of asynchronous copies, out-of-memory; ``device.type ==
"cuda"`` branches take their CPU branch here. ``benchmarks/device_check.py`` checks those on
a real GPU (``test_device_check_quick_passes`` runs its CPU mode).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from device_mixup import DeviceMixup, fake_device, on_device
from PIL import Image

import lit
from lit.asmk import ASMK
from lit.features import FeatureFileError, FeatureStore
from lit.models import save_checkpoint
from lit.pipeline import extract_to_file, model_fingerprint

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PHOTOS = os.path.join(REPO, "lit", "assets", "photos")


@pytest.fixture
def images_dir(tmp_path):
    d = tmp_path / "db"
    d.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        low = rng.random((6, 8, 3))
        img = Image.fromarray((low * 255).astype(np.uint8)).resize((80, 60), Image.BICUBIC)
        img.save(d / f"im{i}.png")
    return d


@pytest.fixture
def ckpt(tmp_path, tiny_model):
    path = tmp_path / "model.pt"
    save_checkpoint(tiny_model, path)
    return path


def _descriptors(seed=0, n=240, d=16, images=12):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.arange(n) // (n // images)


# ---------------------------------------------------------------------- the harness itself
def old_cmd_search_results(index, qfeats, topk):
    """The search step of ``lit search`` as it was with its device mix-ups (negative control, kept verbatim)."""
    qdesc = torch.cat([f.descriptors for f in qfeats]).numpy()
    qids = np.concatenate([np.full(len(f), i) for i, f in enumerate(qfeats)])
    ranks, scores = index.search(qdesc, qids, topk=topk)
    ranks, scores = np.asarray(ranks), np.asarray(scores)
    return ranks, scores


def test_old_cmd_search_fails_under_the_fake_device_and_passes_on_cpu(tiny_model):
    desc, ids = _descriptors()
    q = [lit.LocalFeatures(desc[:20], torch.ones(20), torch.ones(20), torch.zeros(20, dtype=torch.long)),
         lit.LocalFeatures(desc[100:120], torch.ones(20), torch.ones(20), torch.zeros(20, dtype=torch.long))]
    cpu_index = ASMK(desc[:32])
    cpu_index.add(desc, ids)
    ranks, scores = old_cmd_search_results(cpu_index, q, 3)  # fine where host == device
    assert ranks[0, 0] == 0 and ranks[1, 0] == 5
    with fake_device() as fd:
        index = ASMK(desc[:32], device=fd.device)
        index.add(desc, ids)
        with pytest.raises(DeviceMixup, match=r"__array__\(\) of a tensor on the device"):
            old_cmd_search_results(index, q, 3)  # np.asarray of device results: CUDA fails here
        r, s = index.search(torch.cat([f.descriptors for f in q]), torch.repeat_interleave(torch.arange(2), 20), topk=3)
        assert on_device(r) and on_device(s)
        assert np.array_equal(r.cpu().numpy(), ranks) and np.allclose(s.cpu().numpy(), scores)


def test_fake_device_flags_host_tensors_meeting_device_data(fake_device):
    x = torch.ones(4, 3).to(fake_device.device)
    assert on_device(x) and x.device == fake_device.device and on_device(x * 2 + 1)
    with pytest.raises(DeviceMixup, match="mixes"):
        x + torch.ones(4, 3)  # a tensor created without device=
    with pytest.raises(DeviceMixup, match="mixes"):
        torch.cat([x, torch.zeros(1, 3)])
    with pytest.raises(DeviceMixup, match="numpy"):
        x.numpy()
    assert on_device(x + torch.tensor(2.0))  # 0-dim host scalars are fine, as on CUDA
    assert on_device(torch.zeros(2, device=x.device)) and on_device(torch.zeros_like(x))
    y = x.cpu()
    assert not on_device(y) and y.device.type == "cpu" and y.numpy().sum() == 12
    y += 1  # a copy, as a real transfer
    assert float(x.sum()) == 12 and fake_device.syncs == 1


def test_model_moved_to_the_fake_device_keeps_parameters(tiny_model, fake_device):
    tiny_model.to(fake_device.device)
    assert tiny_model.device == fake_device.device
    assert all(on_device(p) and isinstance(p, torch.nn.Parameter) for p in tiny_model.parameters())
    assert all(on_device(b) for b in tiny_model.buffers())


# ---------------------------------------------------------------------- lit paths on the device
def test_extraction_on_the_fake_device_equals_cpu(tiny_model, fake_device):
    g = torch.Generator().manual_seed(1)
    batch = torch.rand(2, 3, 64, 80, generator=g)
    ref = tiny_model.extract_batch(batch)
    ref_sf = tiny_model.superfeatures(batch[0], scale=0.707)
    ref_global = tiny_model.forward_global(batch)
    tiny_model.to(fake_device.device)
    for amp in (None, torch.bfloat16):
        feats = tiny_model.extract_batch(batch.to(fake_device.device), amp=amp)
        if amp is None:
            for a, b in zip(ref, feats, strict=True):
                assert not on_device(b.descriptors)  # features come back on the host
                assert torch.equal(a.superfeature_ids, b.superfeature_ids)
                torch.testing.assert_close(b.descriptors, a.descriptors, rtol=1e-4, atol=1e-5)
    sf = tiny_model.superfeatures(batch[0], scale=0.707)
    torch.testing.assert_close(sf.descriptors, ref_sf.descriptors, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(tiny_model.forward_global(batch).cpu(), ref_global, rtol=1e-4, atol=1e-5)
    f = tiny_model.extract(batch[0])  # host input: moved to the device by the model
    assert f.descriptors.shape == ref[0].descriptors.shape


def test_extract_to_file_on_the_fake_device(tiny_model, images_dir, tmp_path):
    paths = sorted(str(p) for p in images_dir.iterdir())
    extract_to_file(tiny_model, paths, tmp_path / "cpu.h5", progress=False)
    with fake_device() as fd:
        tiny_model.to(fd.device)
        summary = extract_to_file(tiny_model, paths, tmp_path / "dev.h5", progress=False, batch_size=2)
    assert summary.done == 4
    with FeatureStore(tmp_path / "cpu.h5") as a, FeatureStore(tmp_path / "dev.h5") as b:
        np.testing.assert_allclose(b.all_descriptors()[0], a.all_descriptors()[0], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("binary", [True, False])
@pytest.mark.parametrize("idf", [False, True])
def test_asmk_build_and_search_on_the_fake_device_equal_cpu(binary, idf):
    desc, ids = _descriptors(seed=2)
    q, qids = desc[::3] + 0.05, ids[::3]
    cpu = ASMK.train(desc, size=24, seed=0)
    ref = ASMK(cpu.codebook, binary=binary, use_idf=idf)
    ref.add(desc, ids)
    r0, s0 = ref.search(q, qids, topk=5)
    with fake_device() as fd:
        trained = ASMK.train(desc, size=24, seed=0, device=fd.device)
        torch.testing.assert_close(trained.codebook.cpu(), cpu.codebook)
        index = ASMK(trained.codebook, binary=binary, use_idf=idf, device=fd.device)
        index.add(desc[:120], ids[:120])
        index.add(desc[120:].numpy(), ids[120:].numpy())  # numpy input too
        r1, s1 = index.search(q, qids, topk=5)
        assert on_device(r1) and on_device(index.scores(q, qids))
        r1, s1 = r1.cpu(), s1.cpu()
        stats = index.stats()
    assert torch.equal(r1, r0)
    torch.testing.assert_close(s1, s0)
    assert stats["vectors"] == ref.stats()["vectors"]


def test_knn_on_the_fake_device_equals_cpu():
    from lit.metric import knn, recall_at_ks

    g = torch.Generator().manual_seed(0)
    x = torch.nn.functional.normalize(torch.randn(90, 8, generator=g), dim=1)
    labels = torch.arange(90) % 7
    ref = knn(x, None, 10, chunk_size=32, device="cpu")
    ref_recall = recall_at_ks(x, labels, (1, 5), device="cpu")
    with fake_device() as fd:
        res = knn(x, None, 10, chunk_size=32, device=fd.device)
        recall = recall_at_ks(x, labels, (1, 5), device=fd.device)
    assert torch.equal(res.indices, ref.indices) and not on_device(res.indices)
    assert recall == ref_recall


def _train_photos(root, n=24):
    from training import make_photos

    make_photos(root, n=n)


def test_trainer_epoch_on_the_fake_device_matches_cpu(tmp_path):
    from training import tiny_config_dict

    from lit.train import Trainer, config_from_dict

    _train_photos(tmp_path / "photos")
    cfg = config_from_dict(tiny_config_dict(tmp_path / "photos", optim={"epochs": 1, "tuples_per_step": 2},
                                            data={"queries_per_epoch": 4}))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ref = Trainer(cfg, tmp_path / "cpu", device="cpu", log=lambda _: None)
        ref_record = ref.train_epoch()
        with fake_device() as fd:
            trainer = Trainer(cfg, tmp_path / "dev", device=fd.device, log=lambda _: None)
            assert all(on_device(p) for p in trainer.model.parameters())
            syncs_before = fd.syncs
            record = trainer.train_epoch()
            state = {k: v.cpu() for k, v in trainer.model.state_dict().items()}
            epoch_syncs = fd.syncs - syncs_before
    finally:
        torch.set_num_threads(threads)
    assert record["tuples"] == ref_record["tuples"] == 4
    assert record["loss"] == pytest.approx(ref_record["loss"], rel=1e-4)
    for k, v in ref.model.state_dict().items():
        torch.testing.assert_close(state[k], v, rtol=1e-4, atol=1e-5)
    assert epoch_syncs < 400, epoch_syncs  # bounded host syncs (mining and matching need some)


def test_metric_training_step_on_the_fake_device_matches_cpu(tmp_path):
    from metric.shapes import TINY, make_folder_dataset

    from lit.metric import (
        GlobalModel,
        ImageFolderClasses,
        TrainConfig,
        evaluate_global,
        train_global,
        train_transform,
    )
    from lit.metric.data import eval_transform

    root = make_folder_dataset(tmp_path / "shapes", per_class=4, seed=0, classes=4)
    cfg = TrainConfig(classes_per_batch=4, samples_per_class=2, epochs=1, batches_per_epoch=2, seed=3)
    results = []
    for use_fake in (False, True):
        torch.manual_seed(0)
        model = GlobalModel(TINY, dim=8, out_index=-2, image_size=32)
        train = ImageFolderClasses(root, train_transform(32))
        test = ImageFolderClasses(root, eval_transform(32, 32))
        if use_fake:
            with fake_device() as fd:
                # evaluate, then train, then evaluate: the model is moved to the device
                # inside extract_embeddings first (inference tensors on a real GPU)
                before = evaluate_global(model, test, ks=(1,), device=fd.device)
                history = train_global(model, train, cfg, device=fd.device)
                after = evaluate_global(model, test, ks=(1,), device=fd.device)
                state = {k: v.cpu() for k, v in model.state_dict().items()}
        else:
            before = evaluate_global(model, test, ks=(1,), device="cpu")
            history = train_global(model, train, cfg, device="cpu")
            after = evaluate_global(model, test, ks=(1,), device="cpu")
            state = model.state_dict()
        results.append((before, history[0]["loss"], after, state))
    (b0, l0, a0, s0), (b1, l1, a1, s1) = results
    assert b0 == b1 and a0 == a1 and l1 == pytest.approx(l0, rel=1e-5)
    for k in s0:
        torch.testing.assert_close(s1[k], s0[k], rtol=1e-5, atol=1e-6)


def _cli(monkeypatch, state, *args):
    import lit._device
    import lit.cli

    monkeypatch.setattr(lit._device, "resolve_device", lambda name, **kw: state.device)
    return lit.cli.main([str(a) for a in args])


def test_cli_commands_in_process_on_the_fake_device(tmp_path, images_dir, ckpt, monkeypatch, capsys):
    feats, index, res = tmp_path / "f.h5", tmp_path / "i.h5", tmp_path / "r.json"
    a = os.path.join(PHOTOS, "sacre_coeur", "sacre_coeur1.jpg")
    b = os.path.join(PHOTOS, "sacre_coeur", "sacre_coeur2.jpg")
    import lit.cli

    # CPU reference first
    assert lit.cli.main(["extract", str(images_dir), "--out", str(tmp_path / "cpu.h5"), "--model", str(ckpt),
                         "--device", "cpu", "--quiet"]) == 0
    assert lit.cli.main(["index", str(tmp_path / "cpu.h5"), "--out", str(tmp_path / "cpu_i.h5"), "--codebook-size", "8",
                         "--device", "cpu"]) == 0
    assert lit.cli.main(["search", str(tmp_path / "cpu_i.h5"), str(images_dir / "im1.png"), "--model", str(ckpt),
                         "--device", "cpu", "--topk", "3", "--json", str(tmp_path / "cpu_r.json")]) == 0
    assert lit.cli.main(["search", str(tmp_path / "cpu_i.h5"), "--query-features", str(tmp_path / "cpu.h5"), "--device", "cpu",
                         "--topk", "2", "--json", str(tmp_path / "cpu_rq.json")]) == 0
    with fake_device() as fd:
        assert _cli(monkeypatch, fd, "extract", images_dir, "--out", feats, "--model", ckpt, "--device", "cuda", "--quiet", "--batch-size", "2") == 0
        assert _cli(monkeypatch, fd, "index", feats, "--out", index, "--codebook-size", "8", "--device", "cuda") == 0
        assert _cli(monkeypatch, fd, "search", index, images_dir / "im1.png", "--model", ckpt, "--device", "cuda",
                    "--topk", "3", "--json", res) == 0
        assert _cli(monkeypatch, fd, "search", index, "--query-features", feats, "--device", "cuda", "--topk", "2",
                    "--json", tmp_path / "rq.json") == 0
        assert _cli(monkeypatch, fd, "match", a, b, "--model", ckpt, "--device", "cuda", "--threshold", "0.5",
                    "--json", tmp_path / "m.json") == 0
        assert _cli(monkeypatch, fd, "plot-attention", a, "--model", ckpt, "--device", "cuda", "--top", "2",
                    "--out", tmp_path / "att.png") == 0
    got, ref = json.loads(res.read_text()), json.loads((tmp_path / "cpu_r.json").read_text())
    got, ref = got["queries"], ref["queries"]  # lit.pipeline's JSON: {db_root, query_root, score, queries}
    assert [h["name"] for h in got[0]["results"]] == [h["name"] for h in ref[0]["results"]]
    np.testing.assert_allclose([h["score"] for h in got[0]["results"]], [h["score"] for h in ref[0]["results"]], rtol=1e-4)
    rq, ref_rq = json.loads((tmp_path / "rq.json").read_text()), json.loads((tmp_path / "cpu_rq.json").read_text())
    assert [[h["name"] for h in r["results"]] for r in rq["queries"]] == [[h["name"] for h in r["results"]] for r in ref_rq["queries"]]
    assert json.loads((tmp_path / "m.json").read_text())["matches"] >= 0
    assert Image.open(tmp_path / "att.png").size[0] > 100


# ---------------------------------------------------------------------- precision in the fingerprint
def test_fingerprint_includes_amp_and_half_and_resume_refuses_other_precision(tiny_model, images_dir, tmp_path):
    rt = tiny_model.cfg.runtime
    args = (tiny_model, rt.scales, rt.features_num, rt.image_size)
    fps = {model_fingerprint(*args), model_fingerprint(*args, amp=torch.bfloat16), model_fingerprint(*args, half=True),
           model_fingerprint(*args, amp=torch.bfloat16, half=True), model_fingerprint(*args, amp=torch.float16)}
    assert len(fps) == 5
    paths = sorted(str(p) for p in images_dir.iterdir())
    out = tmp_path / "f.h5"
    extract_to_file(tiny_model, paths[:2], out, progress=False)
    for kw in ({"amp": torch.bfloat16}, {"half": True}):
        with pytest.raises(FeatureFileError, match="fingerprint differs"):
            extract_to_file(tiny_model, paths, out, progress=False, **kw)
    assert extract_to_file(tiny_model, paths, out, progress=False).skipped == 2  # same settings resume
    bf = tmp_path / "bf16.h5"
    extract_to_file(tiny_model, paths[:1], bf, progress=False, amp=torch.bfloat16)
    assert extract_to_file(tiny_model, paths, bf, progress=False, amp=torch.bfloat16).skipped == 1


def test_cli_extract_rerun_with_amp_is_a_clear_error(tmp_path, images_dir, ckpt, capsys):
    import lit.cli

    out = tmp_path / "f.h5"
    assert lit.cli.main(["extract", str(images_dir), "--out", str(out), "--model", str(ckpt), "--device", "cpu", "--quiet"]) == 0
    assert lit.cli.main(["extract", str(images_dir), "--out", str(out), "--model", str(ckpt), "--device", "cpu", "--quiet", "--amp"]) == 2
    err = capsys.readouterr().err
    assert "fingerprint differs" in err and str(out) in err and len(err.strip().splitlines()) <= 3


@pytest.fixture
def tiny_world(tmp_path, tiny_model):
    from photo_folders import revisited_dataset

    root = revisited_dataset(tmp_path / "data", np.random.default_rng(0), landmarks=2, views=3)
    ckpt = tmp_path / "model.pt"
    save_checkpoint(tiny_model, ckpt)
    return root, ckpt


def test_revisited_amp_reaches_extraction_and_has_its_own_cache(tiny_world, tmp_path, monkeypatch):
    from lit.cli import main
    from lit.models.model import SuperFeatureModel

    root, ckpt = tiny_world
    seen = []
    original = SuperFeatureModel.extract_batch

    def spy(self, images, *a, **k):
        seen.append(k.get("amp"))
        return original(self, images, *a, **k)

    monkeypatch.setattr(SuperFeatureModel, "extract_batch", spy)
    common = ["--dataset", "tinyox", "--data-root", str(root), "--model", str(ckpt), "--device", "cpu",
              "--codebook-size", "8", "--workers", "0", "--quiet"]
    assert main(["evaluate", *common, "--json", str(tmp_path / "fp32.json")]) == 0
    assert seen and set(seen) == {None}
    seen.clear()
    assert main(["evaluate", *common, "--amp", "--json", str(tmp_path / "bf16.json")]) == 0
    assert seen and set(seen) == {torch.bfloat16}
    assert len(list((root / "lit-cache").glob("tinyox-db-*.h5"))) == 2  # fp32 and bf16 features apart
    assert json.loads((tmp_path / "bf16.json").read_text())["amp"] == "torch.bfloat16"


# ---------------------------------------------------------------------- the index timer
def test_revisited_counts_the_csr_merge_as_index_time(tiny_world, tmp_path, monkeypatch):
    from lit.cli import main

    root, ckpt = tiny_world
    original = ASMK.flush

    def slow_flush(self):
        if self.ivf.num_pending:
            time.sleep(0.5)  # a stand-in for the merge sort of ~10^9 entries at R1M
        return original(self)

    monkeypatch.setattr(ASMK, "flush", slow_flush)
    out = tmp_path / "r.json"
    assert main(["evaluate", "--dataset", "tinyox", "--data-root", str(root), "--model", str(ckpt), "--device", "cpu",
                           "--codebook-size", "8", "--workers", "0", "--quiet", "--json", str(out)]) == 0
    t = json.loads(out.read_text())["timings"]
    assert t["index_s"] >= 0.5 and t["search_s"] < 0.5, t


# ---------------------------------------------------------------------- resolve_device
def test_resolve_device_refuses_a_gpu_index_beyond_the_machine(monkeypatch):
    import lit.cli
    from lit._device import resolve_device
    from lit.errors import UsageError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert resolve_device("cuda") == torch.device("cuda") and resolve_device("cuda:0") == torch.device("cuda:0")
    with pytest.raises(UsageError, match=r"cuda:7: this machine has 1 CUDA device \(cuda:0\.\.cuda:0\)"):
        resolve_device("cuda:7")
    for bad in ("cuda:x", "cuda:", "gpu", "cuda:-1"):
        with pytest.raises(UsageError, match="auto, cpu or cuda"):
            resolve_device(bad)
    assert lit.cli.main(["match", "a.jpg", "b.jpg", "--device", "cuda:3"]) == 2


# ---------------------------------------------------------------------- inference tensors
def test_evaluate_then_train_after_a_device_move(tmp_path):
    """On a GPU, extract_embeddings moved the model inside inference_mode: its parameters
    became inference tensors and training failed. The fake device copies on a move, as CUDA."""
    from metric.shapes import TINY, make_folder_dataset

    from lit.metric import (
        GlobalModel,
        ImageFolderClasses,
        TrainConfig,
        extract_embeddings,
        train_global,
        train_transform,
    )
    from lit.metric.data import eval_transform

    root = make_folder_dataset(tmp_path / "shapes", per_class=2, seed=0, classes=2)
    torch.manual_seed(0)
    model = GlobalModel(TINY, dim=8, out_index=-2, image_size=32)
    with fake_device() as fd:
        extract_embeddings(model, ImageFolderClasses(root, eval_transform(32, 32)), device=fd.device)
        assert not any(p.is_inference() for p in model.parameters())
        cfg = TrainConfig(classes_per_batch=2, samples_per_class=2, epochs=1, batches_per_epoch=1)
        assert np.isfinite(train_global(model, ImageFolderClasses(root, train_transform(32)), cfg, device=fd.device)[0]["loss"])


# ---------------------------------------------------------------------- graph-free tokens
def test_backbone_tokens_and_whitening_features_carry_no_graph(tiny_model):
    from lit.train.trainer import backbone_tokens, whitening_features

    imgs = [torch.rand(3, 48, 64, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    tiny_model.train()
    tokens = backbone_tokens(tiny_model, imgs.__getitem__, range(3), scales=(1.0, 0.5))
    assert not tokens.requires_grad and tokens.grad_fn is None
    assert tokens.shape == (3 * (3 * 4 + 2 * 2), 256)  # 48x64 -> 3x4 cells, 24x32 -> 2x2
    feats = whitening_features(tiny_model, imgs.__getitem__, range(3))
    assert not feats.requires_grad


# ---------------------------------------------------------------------- RNG states on resume
@pytest.mark.parametrize("visible", [1, 4, 8, 12])
def test_resume_restores_cuda_rng_states_for_the_visible_gpus(monkeypatch, visible):
    from lit.train import trainer

    calls = []

    def set_rng_state(state, device=0):
        if int(device) >= visible:
            raise IndexError(f"device {device} of {visible}")
        calls.append((int(device), int(state[0])))

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: visible)
    monkeypatch.setattr(torch.cuda, "set_rng_state", set_rng_state)
    monkeypatch.setattr(torch.cuda.random, "set_rng_state", set_rng_state)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [torch.full((16,), i, dtype=torch.uint8) for i in range(8)])
    state = trainer._rng_state()  # saved with 8 GPUs
    before = torch.get_rng_state()
    torch.manual_seed(123)
    trainer._set_rng_state(state)
    assert torch.equal(torch.get_rng_state(), before)
    assert calls == [(i, i) for i in range(min(8, visible))]


# ---------------------------------------------------------------------- the metric RNG
def test_metric_training_leaves_other_generators_alone(tmp_path, monkeypatch):
    from metric.shapes import TINY, make_folder_dataset

    from lit.metric import (
        GlobalModel,
        ImageFolderClasses,
        TrainConfig,
        train_global,
        train_transform,
    )

    seeded = []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda seed: seeded.append(seed))
    monkeypatch.setattr(torch.cuda, "manual_seed", lambda seed: seeded.append(seed))
    root = make_folder_dataset(tmp_path / "shapes", per_class=2, seed=0, classes=2)
    model = GlobalModel(TINY, dim=8, out_index=-2, image_size=32)
    torch.manual_seed(7)
    seeded.clear()
    before = torch.get_rng_state()
    cfg = TrainConfig(classes_per_batch=2, samples_per_class=2, epochs=1, batches_per_epoch=1, seed=3)
    train_global(model, ImageFolderClasses(root, train_transform(32)), cfg, device="cpu")
    assert seeded == []  # a CPU run reseeds no CUDA generator
    assert torch.equal(torch.get_rng_state(), before)  # and restores the CPU one


# ---------------------------------------------------------------------- precision policy
@pytest.mark.parametrize("capability, expected", [((7, 0), False), ((7, 5), False), ((8, 0), True), ((9, 0), True)])
def test_precision_auto_uses_bf16_only_on_gpus_with_native_bf16(monkeypatch, capability, expected):
    from contextlib import nullcontext

    from lit.train.trainer import autocast_factory

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    factory = autocast_factory(torch.device("cuda", 0), "auto")
    assert (factory is not nullcontext) == expected
    assert autocast_factory(torch.device("cuda", 0), "bf16") is not nullcontext
    assert autocast_factory(torch.device("cpu"), "auto") is nullcontext


def test_fp32_reference_path_turns_tf32_off_on_the_device_only(tiny_model, fake_device):
    from lit.models.model import fp32_reference

    conv, mm = torch.backends.cudnn.conv, torch.backends.cuda.matmul
    before = (conv.fp32_precision, mm.fp32_precision)
    seen = []
    tiny_model.backbone.register_forward_hook(lambda *_: seen.append((conv.fp32_precision, mm.fp32_precision)))
    img = torch.rand(3, 48, 64)
    tiny_model.extract(img, scales=(1.0,))  # CPU: nothing changes
    tiny_model.to(fake_device.device)
    tiny_model.extract(img, scales=(1.0,))  # fp32 reference on the device: true float32
    tiny_model.extract(img, scales=(1.0,), amp=torch.bfloat16)  # the fast path: untouched
    tiny_model.superfeatures(img)
    tiny_model.allow_tf32 = True
    tiny_model.extract(img, scales=(1.0,))  # the user asked for TF32
    assert seen == [before, ("ieee", "ieee"), before, ("ieee", "ieee"), before]
    assert (conv.fp32_precision, mm.fp32_precision) == before
    with fp32_reference("cuda"):
        assert conv.fp32_precision == "ieee"
    assert (conv.fp32_precision, mm.fp32_precision) == before


# ---------------------------------------------------------------------- the device check
@pytest.mark.slow  # about a minute and a half on 2 cores; CI runs it (`make test` runs every marker)
def test_device_check_quick_passes_on_cpu(tmp_path):
    out = tmp_path / "check.json"
    env = dict(os.environ, OMP_NUM_THREADS="2")
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", "device_check.py"), "--device", "cpu", "--quick",
                           "--json", str(out)], capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    checks = report["checks"]
    for name in ("extract_fp32", "extract_bf16_agreement", "asmk_binary_idf0", "asmk_real_idf1", "trainer_bf16_resume",
                 "metric_trainer", "knn_exact", "rerank_tokens", "cli_extract", "cli_index", "cli_search", "cli_match",
                 "cli_plot_attention", "revisited_tiny", "ddp"):
        assert name in checks, name
    assert all(c["status"] in ("pass", "not run") for c in checks.values()), {k: c for k, c in checks.items() if c["status"] == "fail"}
    assert checks["ddp"]["status"] == "not run" and checks["ddp"]["reason"]
    assert report["machine"]["torch"] == torch.__version__ and report["passed"] is True
    assert all("seconds" in c for c in checks.values())
