"""One command that runs every device path of lit on small inputs and checks it against
the CPU, then measures the speed figures users care about; writes one JSON.

    python benchmarks/device_check.py --device cuda --json device_check.json   # one GPU, < 8 min
    python benchmarks/device_check.py --device cpu --quick --json out.json     # CI, < 2 min

Checks (each ``pass`` / ``fail`` / ``not run`` with its reason, its figure and its time):

- ``extract_fp32``: the float32 reference path (TF32 off) on the device equals the CPU,
  max relative descriptor error <= 1e-4, same kept features;
- ``extract_bf16_agreement``: the fast path (bf16 autocast, batches, channels-last) keeps
  >= 95 % of the fp32 features, max relative error <= 5e-2;
- ``compile``: ``torch.compile`` (inductor on CUDA; dynamo with the eager backend on CPU,
  where inductor's build takes minutes) gives the eager fast path's features, with every
  shape compiled before timing and no fallback to eager;
- ``asmk_{binary,real}_idf{0,1}``: ASMK built and searched on the device gives the CPU
  index's scores (rtol 1e-5) and top-1 ranks; the codebook is trained on the device too;
- ``trainer_bf16_resume``: lit's trainer, 3 steps per epoch in bf16 autocast, checkpoint
  and resume: 2 epochs in one run equal 1 epoch + resume + 1 epoch;
- ``metric_trainer``: lit.metric evaluate -> train -> evaluate on the device, loss close
  to the CPU's; ``knn_exact``: exact kNN on the device equals a stable brute force;
- ``ddp``: two processes over NCCL give the single-process parameters (>= 2 GPUs only);
- ``cli_extract``, ``cli_index``, ``cli_search``, ``cli_match``, ``cli_plot_attention``:
  ``lit.cli.main`` with ``--device DEVICE``, results equal to the CPU's;
- ``revisited_tiny``: the revisited benchmark end to end on a tiny generated dataset in
  the revisitop layout, same mAP as on the CPU.

Speed (``speed_*``, figures only, they pass when they ran): extraction at 1024x768, 7 scales,
1000 features (fp32 batch 1, bf16 batch 16, bf16 + compile) in images/s; training tuples/s
and peak memory (1 query + 1 positive + 5 negatives at 1024x768, bf16); ASMK build time and
ms per query at ROxford size (5,000 images x 1,000 descriptors, 65,536 words). ``--quick``
uses toy sizes for everything. The exit status is 0 when no check failed.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS for the resume check

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

HERE = Path(__file__).resolve().parent


def _script(name: str):
    """Another script of this folder, loaded from its file (no sys.path change)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class NotRun(Exception):
    """A check that cannot run here (the message says why)."""


# ---------------------------------------------------------------------- helpers
def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def machine(device: str) -> dict:
    info = {"device": device, "torch": torch.__version__, "python": platform.python_version(),
            "platform": platform.platform(), "cpus": os.cpu_count(), "threads": torch.get_num_threads(),
            "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None}
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(torch.device(device))
        info.update({"gpu": props.name, "gpu_memory_gb": round(props.total_memory / 2**30, 1),
                     "compute_capability": list(torch.cuda.get_device_capability(torch.device(device))),
                     "gpus": torch.cuda.device_count()})
    return info


def tiny_model_config(quick: bool):
    from lit.models import BackboneConfig, LITConfig, ModelConfig, RuntimeConfig

    if quick:
        return ModelConfig(backbone=BackboneConfig("resnet18", 3), lit=LITConfig(T=2, N=16, dim=64), reduction_dim=32,
                           runtime=RuntimeConfig(image_size=128, features_num=60, scales=(1.0, 0.707, 0.5)))
    return ModelConfig(runtime=RuntimeConfig(image_size=512, features_num=1000))  # FIRe architecture, 7 scales


def make_model(cfg, seed: int = 0):
    from lit.models import SuperFeatureModel

    torch.manual_seed(seed)
    model = SuperFeatureModel(cfg)
    with torch.no_grad():  # non-trivial frozen batch norm and reduction
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def smooth_images(n: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """Smooth random images in [0, 1] (closer to photos than white noise)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, max(2, h // 16), max(2, w // 16), generator=g)
    return F.interpolate(x, size=(h, w), mode="bicubic", align_corners=False).clamp(0, 1)


def write_photos(folder: Path, n: int, size=(96, 72), seed: int = 0, scenes: int = 0) -> list[str]:
    """``n`` synthetic photos: smooth background plus random boxes and ellipses."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    w, h = size
    paths = []
    for i in range(n):
        low = rng.random((4, 5, 3))
        img = Image.fromarray((low * 255).astype(np.uint8)).resize((w, h), Image.BICUBIC)
        draw = ImageDraw.Draw(img)
        for _ in range(int(rng.integers(3, 7))):
            x0, y0 = int(rng.integers(0, w - 10)), int(rng.integers(0, h - 10))
            box = [x0, y0, x0 + int(rng.integers(8, w // 2)), y0 + int(rng.integers(8, h // 2))]
            colour = tuple(int(c) for c in rng.integers(0, 256, 3))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=colour)
        sub = folder / (f"scene{i % scenes:02d}" if scenes else "")
        sub.mkdir(parents=True, exist_ok=True)
        path = sub / f"photo{i:03d}.png"
        img.save(path)
        paths.append(str(path))
    return paths


def feature_agreement(ref, other) -> tuple[float, float]:
    """Share of ``ref``'s kept (scale, super-feature) pairs that ``other`` keeps too, and the
    max relative descriptor error over those."""
    kr = {(round(float(s), 3), int(i)): j for j, (s, i) in enumerate(zip(ref.scales, ref.superfeature_ids))}
    ko = {(round(float(s), 3), int(i)): j for j, (s, i) in enumerate(zip(other.scales, other.superfeature_ids))}
    common = sorted(set(kr) & set(ko))
    if not common:
        return 0.0, float("inf")
    a = ref.descriptors[[kr[c] for c in common]].double()
    b = other.descriptors[[ko[c] for c in common]].double()
    rel = ((a - b).norm(dim=1) / a.norm(dim=1).clamp_min(1e-12)).max()
    return len(common) / max(1, len(ref)), float(rel)


def _quiet_call(fn, *args, **kwargs):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = fn(*args, **kwargs)
    return rc, out.getvalue(), err.getvalue()


# ---------------------------------------------------------------------- checks
class Checker:
    def __init__(self, device: str, quick: bool, work: Path, budget: float = 330.0) -> None:
        self.device, self.quick, self.work = device, quick, work
        self.t0, self.budget = time.perf_counter(), budget
        self.on_gpu = device.startswith("cuda")
        self.cfg = tiny_model_config(quick)
        self.checks: dict[str, dict] = {}
        h, w = (64, 80) if quick else (384, 512)
        self.images = smooth_images(2 if quick else 4, h, w)
        self._cache: dict = {}

    def run(self, name: str, fn) -> None:
        t = time.perf_counter()
        try:
            ok, figure = fn()
            entry = {"status": "pass" if ok else "fail", "figure": figure}
        except NotRun as why:
            entry = {"status": "not run", "reason": str(why), "figure": None}
        except Exception as err:  # a crash is a failed check, reported with its traceback
            entry = {"status": "fail", "figure": None, "error": f"{type(err).__name__}: {err}",
                     "traceback": traceback.format_exc()[-2000:]}
        sync(self.device)
        entry["seconds"] = round(time.perf_counter() - t, 3)
        self.checks[name] = entry
        print(f"{entry['status']:8s} {name:28s} {entry['seconds']:7.1f} s  {json.dumps(entry.get('figure') or entry.get('reason') or entry.get('error'))[:140]}",
              file=sys.stderr, flush=True)

    # -- extraction
    def models(self):
        if "models" not in self._cache:
            cpu = make_model(self.cfg)
            dev = make_model(self.cfg).to(self.device)
            self._cache["models"] = (cpu, dev)
        return self._cache["models"]

    def extract_fp32(self):
        cpu, dev = self.models()
        ref = [cpu.extract(img) for img in self.images]
        got = [dev.extract(img.to(self.device)) for img in self.images]
        self._cache["fp32"] = got
        shares, errs = zip(*(feature_agreement(r, g) for r, g in zip(ref, got)))
        strengths = max(float(((r.strengths - g.strengths).abs() / r.strengths.abs().clamp_min(1e-12)).max())
                        for r, g in zip(ref, got) if len(r) == len(g))
        fig = {"kept_share_min": min(shares), "max_relative_descriptor_error": max(errs),
               "max_relative_strength_error": strengths, "tf32": False}
        return min(shares) >= 0.99 and max(errs) <= 1e-4, fig

    def extract_bf16_agreement(self):
        _, dev = self.models()
        ref = self._cache.get("fp32") or [dev.extract(img.to(self.device)) for img in self.images]
        fast = make_model(self.cfg).to(self.device)
        if self.on_gpu:
            fast.to_channels_last()
        got = fast.extract_batch(self.images.to(self.device), amp=torch.bfloat16)
        shares, errs = zip(*(feature_agreement(r, g) for r, g in zip(ref, got)))
        return min(shares) >= 0.95 and max(errs) <= 5e-2, {"kept_share_min": min(shares), "max_relative_descriptor_error": max(errs)}

    def compile(self):
        CompileWatch = _script("extract_speed").CompileWatch

        # lit's modules at toy size: the same code as FIRe's, compiled in seconds, not minutes
        model = make_model(tiny_model_config(True)).to(self.device)
        eager = model.extract_batch(self.images.to(self.device), amp=torch.bfloat16)
        backend = "inductor" if self.on_gpu else "eager"
        if backend == "eager":
            model.backbone = torch.compile(model.backbone, backend="eager", dynamic=False)
            model.lit = torch.compile(model.lit, backend="eager", dynamic=False)
            watch = None
        else:
            watch = CompileWatch(model)
        x = self.images.to(self.device)
        model.extract_batch(x, amp=torch.bfloat16)  # warm-up: every scale at this batch size
        if watch:
            watch.mark_warm()
        got = model.extract_batch(x, amp=torch.bfloat16)
        shares, errs = zip(*(feature_agreement(r, g) for r, g in zip(eager, got)))
        fig = {"backend": backend, "kept_share_min": min(shares), "max_relative_descriptor_error": max(errs)}
        ok = min(shares) >= 0.95 and max(errs) <= 5e-2
        if watch:
            fig.update(watch.report())
            ok = ok and fig["compiled_after_warmup"] == 0 and not fig["fell_back_to_eager"]
        return ok, fig

    # -- ASMK
    def asmk(self, binary: bool, idf: bool):
        from lit.asmk import ASMK

        g = torch.Generator().manual_seed(1)
        n_img, per, d = (30, 40, 32) if self.quick else (200, 200, 128)
        desc = torch.randn(n_img * per, d, generator=g)
        ids = torch.arange(n_img * per) // per
        q, qids = desc[::7] + 0.1 * torch.randn(len(desc[::7]), d, generator=g), ids[::7]
        codebook = desc[torch.randperm(len(desc), generator=g)[: (64 if self.quick else 1024)]]
        ref = ASMK(codebook, binary=binary, use_idf=idf)
        ref.add(desc, ids)
        s_ref = ref.scores(q, qids)
        idx = ASMK(codebook, binary=binary, use_idf=idf, device=self.device)
        idx.add(desc.to(self.device), ids.to(self.device))
        s_dev = idx.scores(q.to(self.device), qids.to(self.device)).cpu()
        r_dev, _ = idx.search(q.to(self.device), qids.to(self.device), topk=5)
        r_ref, _ = ref.search(q, qids, topk=5)
        err = float(((s_dev - s_ref).abs() / s_ref.abs().clamp_min(1e-6)).max())
        top1 = float((r_dev[:, 0].cpu() == r_ref[:, 0]).float().mean())
        trained = ASMK.train(desc.to(self.device), size=32, seed=0, device=self.device).codebook
        fig = {"max_relative_score_error": err, "top1_agreement": top1, "trained_codebook_finite": bool(torch.isfinite(trained).all())}
        return err <= 1e-5 and top1 == 1.0 and fig["trained_codebook_finite"], fig

    # -- training
    def train_cfg(self, photos: Path, **over):
        from lit.train import config_from_dict

        d = {
            "model": {"backbone": {"name": "resnet18", "out_index": 3}, "lit": {"T": 2, "N": 8, "dim": 32},
                      "reduction_dim": 16, "runtime": {"image_size": 64}},
            "init": {"whitening_images": 6},
            "data": {"source": "folder", "root": str(photos), "image_size": 40, "queries_per_epoch": 3,
                     "pool_size": 8, "num_negatives": 2, "val_images": 2, "val_views": 1},
            "optim": {"epochs": 2, "lr": 1e-3, "tuples_per_step": 1},
            "precision": "bf16", "validate_every": 0, "seed": 0,
        }
        for k, v in over.items():
            d.setdefault(k, {})
            d[k] = {**d[k], **v} if isinstance(v, dict) else v
        return config_from_dict(d)

    def photos(self) -> Path:
        folder = self.work / "photos"
        if not folder.is_dir():
            write_photos(folder, 12, size=(64, 48))
        return folder

    def trainer_bf16_resume(self):
        from lit.models.checkpoint import safe_load
        from lit.train import Trainer

        cfg = self.train_cfg(self.photos())
        quiet = lambda _m: None  # noqa: E731
        torch.use_deterministic_algorithms(True, warn_only=True)
        try:
            full = Trainer(cfg, self.work / "train_full", device=self.device, log=quiet)
            history = full.fit()
            # the epoch-1 checkpoint of that run, resumed in another folder for the second epoch
            part = self.work / "train_part"
            part.mkdir()
            for name in ("checkpoint_epoch0001.pt", "config.yaml"):
                shutil.copy(self.work / "train_full" / name, part / name)
            Trainer(cfg, part, device=self.device, resume=True, log=quiet).fit()
        finally:
            torch.use_deterministic_algorithms(False)
        a = safe_load(self.work / "train_full" / "checkpoint_epoch0002.pt")["state_dict"]
        b = safe_load(self.work / "train_part" / "checkpoint_epoch0002.pt")["state_dict"]
        diff = max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].is_floating_point())
        steps = history[-1]["steps"]
        fig = {"steps_per_epoch": steps, "max_parameter_difference_after_resume": diff, "loss": history[-1]["loss"]}
        return steps == 3 and diff <= 1e-6 and np.isfinite(history[-1]["loss"]), fig

    def metric_trainer(self):
        from lit.metric import (
            GlobalModel,
            ImageFolderClasses,
            TrainConfig,
            evaluate_global,
            train_global,
        )
        from lit.metric.data import eval_transform, train_transform

        folder = self.work / "classes"
        if not folder.is_dir():
            write_photos(folder, 16, size=(48, 48), seed=3, scenes=4)
        cfg = TrainConfig(classes_per_batch=4, samples_per_class=2, epochs=1, batches_per_epoch=2, seed=0)
        out = {}
        for dev in dict.fromkeys(["cpu", self.device]):
            torch.manual_seed(0)
            model = GlobalModel("test_resnet", dim=8, out_index=-2, image_size=32)
            ev = ImageFolderClasses(str(folder), eval_transform(32, 32))
            before = evaluate_global(model, ev, ks=(1,), device=dev)[1]  # evaluate, then train (issue 17, defect 4)
            loss = train_global(model, ImageFolderClasses(str(folder), train_transform(32)), cfg, device=dev)[-1]["loss"]
            after = evaluate_global(model, ev, ks=(1,), device=dev)[1]
            out[dev] = {"recall@1_before": before, "loss": loss, "recall@1_after": after}
        rel = abs(out[self.device]["loss"] - out["cpu"]["loss"]) / max(abs(out["cpu"]["loss"]), 1e-12)
        return rel <= 2e-2 and np.isfinite(out[self.device]["loss"]), {"runs": out, "loss_relative_difference": rel}

    def rerank_tokens(self):
        """Local tokens and their verification on the device against the CPU: the same tokens (to
        float32 error) and the same inliers per candidate (re-ranking by tokens)."""
        from lit.matching import MatchRule
        from lit.models import token_extractor
        from lit.pipeline import Reranker, RerankSettings

        cpu, dev = self.models()
        tc, td = token_extractor(cpu), token_extractor(dev)
        warped = torch.flip(self.images, dims=[3])  # candidates: the images and their mirrors
        ref = [tc.extract(img) for img in torch.cat([self.images, warped])]
        got = [td.extract(img.to(self.device)) for img in torch.cat([self.images, warped])]
        err = max(float((r.descriptors - g.descriptors.cpu()).abs().max()) for r, g in zip(ref, got) if len(r) == len(g))
        same_rows = all(len(r) == len(g) and torch.equal(r.positions, g.positions.cpu()) for r, g in zip(ref, got))
        settings = RerankSettings.tokens(image_size=self.images.shape[-1])
        on_cpu = Reranker(ref, MatchRule(None), settings).verify(ref[0], list(range(len(ref))))
        on_dev = Reranker(ref, MatchRule(None), settings, device=self.device).verify(ref[0], list(range(len(ref))))
        a, b = [c.num_inliers for c in on_cpu], [c.num_inliers for c in on_dev]
        return same_rows and err <= 1e-3 and a == b, {"max_token_error": err, "same_cells": same_rows,
                                                       "inliers_cpu": a, "inliers_device": b}

    def knn_exact(self):
        from lit.metric import knn

        g = torch.Generator().manual_seed(0)
        x = torch.randint(-1, 2, (400 if self.quick else 3000, 4), generator=g).float()  # many exact ties
        res = knn(x, None, 20, device=self.device, chunk_size=64)
        sims = x.double() @ x.double().T
        sims.fill_diagonal_(float("-inf"))
        ref = torch.from_numpy(np.argsort(-sims.numpy(), axis=1, kind="stable")[:, :20])
        return bool(torch.equal(res.indices.cpu(), ref)), {"queries": len(x), "k": 20, "exact": bool(torch.equal(res.indices.cpu(), ref))}

    def ddp(self):
        if not self.on_gpu:
            raise NotRun("DDP over NCCL needs CUDA; on CPU, gloo DDP is tested by tests/train/test_trainer.py")
        count = torch.cuda.device_count()
        if count < 2:
            raise NotRun(f"needs >= 2 GPUs, this machine has {count}")
        import socket
        import subprocess

        from lit.models.checkpoint import safe_load
        from lit.train import Trainer, save_config

        cfg = self.train_cfg(self.photos(), precision="fp32", data={"queries_per_epoch": 4}, optim={"epochs": 1, "tuples_per_step": 2})
        save_config(cfg, self.work / "ddp.yaml")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(port), "-m", "lit.train", "--config", str(self.work / "ddp.yaml"), "--out", str(self.work / "ddp"),
               "--device", "cuda"]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            return False, {"error": proc.stderr[-1500:]}
        single = Trainer(cfg, self.work / "ddp_single", device=self.device, log=lambda _m: None)
        single.fit()
        a = safe_load(self.work / "ddp" / "model.pt")["state_dict"]
        b = {k: v.cpu() for k, v in single.model.state_dict().items()}
        diff = max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].is_floating_point())
        return diff <= 1e-4, {"gpus": 2, "max_parameter_difference": diff}

    # -- command line
    def cli_setup(self):
        if "cli" in self._cache:
            return self._cache["cli"]
        from lit.models import save_checkpoint

        ckpt = self.work / "cli_model.pt"
        save_checkpoint(make_model(tiny_model_config(True)), ckpt)
        folder = self.work / "cli_images"
        write_photos(folder, 5, size=(128, 96), seed=5)
        self._cache["cli"] = (ckpt, folder)
        return self._cache["cli"]

    def cli(self, step: str):
        import lit.cli

        ckpt, folder = self.cli_setup()
        devices = list(dict.fromkeys(["cpu", self.device]))
        query = sorted(folder.iterdir())[1]
        a, b = sorted(folder.iterdir())[:2]
        results = {}
        for dev in devices:
            w = self.work / f"cli_{dev.replace(':', '_')}"
            w.mkdir(exist_ok=True)
            argv = {
                "extract": ["extract", str(folder), "--out", str(w / "f.h5"), "--model", str(ckpt), "--device", dev, "--quiet"],
                "index": ["index", str(w / "f.h5"), "--out", str(w / "i.h5"), "--codebook-size", "16", "--device", dev],
                "search": ["search", str(w / "i.h5"), str(query), "--model", str(ckpt), "--device", dev, "--topk", "3", "--json", str(w / "r.json")],
                "match": ["match", str(a), str(b), "--model", str(ckpt), "--device", dev, "--threshold", "0.5", "--json", str(w / "m.json")],
                "plot_attention": ["plot-attention", str(a), "--model", str(ckpt), "--device", dev, "--top", "2", "--out", str(w / "att.png")],
            }[step]
            if step == "index" and not (w / "f.h5").is_file():
                _quiet_call(lit.cli.main, self_argv(folder, w, ckpt, dev))
            rc, out, err = _quiet_call(lit.cli.main, argv)
            if rc != 0:
                return False, {"device": dev, "exit": rc, "stderr": err[-500:]}
            results[dev] = self.cli_result(step, w)
        same = results["cpu"] == results[self.device] if step != "plot_attention" else True
        return same, {"result": results[self.device]}

    def cli_result(self, step: str, w: Path):
        from lit.features import FeatureStore

        if step == "extract":
            with FeatureStore(w / "f.h5") as st:
                return {"images": len(st), "descriptors_sum": round(float(st.all_descriptors()[0].sum()), 2)}
        if step == "index":
            return (w / "i.h5").is_file()
        if step == "search":
            return [h["name"] for h in json.loads((w / "r.json").read_text())["queries"][0]["results"]]
        if step == "match":
            return json.loads((w / "m.json").read_text())["matches"]
        return (w / "att.png").stat().st_size > 1000

    # -- benchmark
    def revisited_tiny(self):
        import pickle

        from PIL import Image

        from lit.cli import main as lit_main
        from lit.models import save_checkpoint

        root = self.work / "revisited"
        jpg = root / "tinyox" / "jpg"
        jpg.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(0)
        imlist, gnd, qimlist = [], [], []
        for li in range(3):
            base = (rng.random((6, 8, 3)) * 255).astype(np.uint8)
            for k in range(4):
                arr = np.asarray(Image.fromarray(base).resize((96, 72), Image.BICUBIC)).astype(np.float64)
                arr = np.clip(np.roll(arr, int(rng.integers(-4, 5)), axis=1) + rng.normal(0, 6, arr.shape), 0, 255)
                name = f"land{li}_{k}" if k < 3 else f"query{li}"
                Image.fromarray(arr.astype(np.uint8)).save(jpg / f"{name}.jpg", quality=95)
                (imlist if k < 3 else qimlist).append(name)
            gnd.append({"bbx": np.array([2.0, 2.0, 90.0, 70.0]), "easy": [3 * li], "hard": [3 * li + 1], "junk": [3 * li + 2]})
        with open(root / "tinyox" / "gnd_tinyox.pkl", "wb") as f:
            pickle.dump({"imlist": imlist, "qimlist": qimlist, "gnd": gnd}, f)
        ckpt = self.work / "revisited_model.pt"
        save_checkpoint(make_model(tiny_model_config(True)), ckpt)
        maps = {}
        for dev in dict.fromkeys(["cpu", self.device]):
            out = self.work / f"revisited_{dev.replace(':', '_')}.json"
            rc, _, err = _quiet_call(lit_main, ["evaluate", "--dataset", "tinyox", "--data-root", str(root), "--model", str(ckpt),
                                                      "--device", dev, "--codebook-size", "16", "--workers", "0", "--quiet",
                                                      "--cache-dir", str(self.work / f"revisited_cache_{dev.replace(':', '_')}"),
                                                      "--json", str(out)])
            if rc != 0:
                return False, {"device": dev, "stderr": err[-500:]}
            res = json.loads(out.read_text())
            maps[dev] = {p: round(r["map"], 4) for p, r in res["results"].items()}
            timings = res["timings"]
        return maps["cpu"] == maps[self.device], {"map": maps[self.device], "timings": timings}

    # -- speed
    def speed_extract(self):
        from lit.models import ModelConfig, RuntimeConfig

        if self.quick:
            cfg, (h, w), n, batch = tiny_model_config(True), (64, 80), 2, 2
        else:
            cfg, (h, w), n, batch = ModelConfig(runtime=RuntimeConfig(features_num=1000)), (768, 1024), 32, 16
        model = make_model(cfg).to(self.device)
        images = smooth_images(n, h, w, seed=2).to(self.device)
        fig = {"image_size": [w, h], "scales": len(cfg.runtime.scales), "features_num": cfg.runtime.features_num}

        def timed(fn, count):
            fn(warm=True)
            sync(self.device)
            t = time.perf_counter()
            fn(warm=False)
            sync(self.device)
            return round(count / (time.perf_counter() - t), 3)

        k = 1 if self.quick else 8
        fig["fp32_batch1_images_per_s"] = timed(lambda warm: [model.extract(images[i]) for i in range(1 if warm else k)], k)
        if self.on_gpu:
            model.to_channels_last()

        def fast(warm):
            for s in range(0, batch if warm else n, batch):
                model.extract_batch(images[s:s + batch], amp=torch.bfloat16)

        fig[f"bf16_batch{batch}_images_per_s"] = timed(fast, n)
        if self.on_gpu and time.perf_counter() - self.t0 > self.budget:
            fig["bf16_compile"] = f"not run: past the {self.budget:.0f} s budget before compiling (--budget)"
        elif self.on_gpu:
            CompileWatch = _script("extract_speed").CompileWatch
            watch = CompileWatch(model)
            fig[f"bf16_compile_batch{batch}_images_per_s"] = timed(lambda warm: (fast(warm), watch.mark_warm() if warm else None), n)
            fig["compile"] = watch.report()
        else:
            fig["bf16_compile"] = "not run on CPU (inductor build takes minutes)"
        return True, fig

    def speed_train(self):
        from lit.models import ModelConfig
        from lit.train.trainer import autocast_factory, tuple_loss

        if self.quick:
            cfg, (h, w) = tiny_model_config(True), (48, 64)
        else:
            cfg, (h, w) = ModelConfig(), (768, 1024)
        model = make_model(cfg).to(self.device).train()
        model.dim_reduction.requires_grad_(False)
        opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-6)
        images = list(smooth_images(7, h, w, seed=4))
        autocast = autocast_factory(torch.device(self.device), "bf16")
        steps = 1 if self.quick else 5

        def step():
            out = tuple_loss(model, images, autocast=autocast)
            out.loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        step()
        sync(self.device)
        if self.on_gpu:
            torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        for _ in range(steps):
            step()
        sync(self.device)
        dt = time.perf_counter() - t
        fig = {"tuple": "1 query + 1 positive + 5 negatives", "image_size": [w, h], "precision": "bf16",
               "tuples_per_s": round(steps / dt, 3), "s_per_tuple": round(dt / steps, 3)}
        if self.on_gpu:
            fig["peak_memory_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        return True, fig

    def speed_asmk(self):
        from lit.asmk import ASMK

        n_img, per, words, nq = (50, 50, 256, 10) if self.quick else (5000, 1000, 65536, 70)
        g = torch.Generator(device="cpu").manual_seed(0)
        codebook = torch.randn(words, 128, generator=g)
        index = ASMK(codebook, device=self.device)
        sync(self.device)
        t = time.perf_counter()
        chunk = 500
        for start in range(0, n_img, chunk):
            stop = min(n_img, start + chunk)
            desc = torch.randn((stop - start) * per, 128, generator=g).to(self.device)
            ids = (torch.arange((stop - start) * per) // per + start).to(self.device)
            index.add(desc, ids)
        index.flush()
        sync(self.device)
        build = time.perf_counter() - t
        q = torch.randn(nq * per, 128, generator=g).to(self.device)
        qids = (torch.arange(nq * per) // per).to(self.device)
        index.search(q[:per], qids[:per], topk=100)  # warm-up
        sync(self.device)
        t = time.perf_counter()
        ranks, _ = index.search(q, qids, topk=100)
        ranks.cpu()
        dt = time.perf_counter() - t
        return True, {"images": n_img, "descriptors_per_image": per, "words": words, "build_s": round(build, 3),
                      "ms_per_query": round(1000 * dt / nq, 3), "queries": nq, "stats": index.stats()}


def self_argv(folder, w, ckpt, dev):
    return ["extract", str(folder), "--out", str(w / "f.h5"), "--model", str(ckpt), "--device", dev, "--quiet"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cuda, cuda:N or cpu")
    p.add_argument("--quick", action="store_true", help="toy sizes everywhere (CI: under 2 minutes on 2 CPU cores)")
    p.add_argument("--skip-speed", action="store_true", help="only the correctness checks")
    p.add_argument("--only", default=None, help="comma-separated check names to run")
    p.add_argument("--budget", type=float, default=330.0,
                   help="seconds after which the compiled-extraction speed figure (minutes of compilation) is skipped")
    p.add_argument("--json", default=None, help="write the report here")
    args = p.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"device_check: --device {args.device}: CUDA is not available", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="lit-device-check-") as tmp:
        c = Checker(args.device, args.quick, Path(tmp), budget=args.budget)
        plan = [
            ("extract_fp32", c.extract_fp32), ("extract_bf16_agreement", c.extract_bf16_agreement), ("compile", c.compile),
            *[(f"asmk_{'binary' if b else 'real'}_idf{int(i)}", lambda b=b, i=i: c.asmk(b, i)) for b in (True, False) for i in (False, True)],
            ("trainer_bf16_resume", c.trainer_bf16_resume), ("metric_trainer", c.metric_trainer), ("knn_exact", c.knn_exact),
            ("rerank_tokens", c.rerank_tokens),
            ("ddp", c.ddp),
            *[(f"cli_{s}", lambda s=s: c.cli(s)) for s in ("extract", "index", "search", "match", "plot_attention")],
            ("revisited_tiny", c.revisited_tiny),
        ]
        if not args.skip_speed:
            plan += [("speed_train", c.speed_train), ("speed_asmk", c.speed_asmk), ("speed_extract", c.speed_extract)]
        only = set(args.only.split(",")) if args.only else None
        for name, fn in plan:
            if only is None or name in only:
                c.run(name, fn)
        report = {"machine": machine(args.device), "quick": args.quick, "checks": c.checks,
                  "passed": all(v["status"] != "fail" for v in c.checks.values()),
                  "seconds": round(time.perf_counter() - t0, 1)}
    text = json.dumps(report, indent=1, default=str)
    if args.json:
        Path(args.json).write_text(text)
    summary = {k: v["status"] for k, v in report["checks"].items()}
    print(json.dumps({"passed": report["passed"], "seconds": report["seconds"], "checks": summary}))
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
