"""Super-feature extraction speed and fast-path agreement; prints JSON.

Measures, at a given image size and scales, images/s and ms/image for:
  - ``naive``: a straightforward one-image-at-a-time implementation written here (per scale:
    resize, backbone, LIT, reduction, copy to the host; pooling and sorting in numpy),
  - ``fp32``: lit's reference path (``model.extract``), batch 1,
  - ``fast``: lit's fast path (bf16 autocast, batches of B, channels-last; torch.compile on
    CUDA with ``--compile``),
and the agreement of the fast path with fp32: share of the kept features that are the same
(scale, super-feature id), max relative descriptor error on those, and the Spearman
correlation of ASMK scores on a small synthetic database built from the images.

Example (H100)::

    python benchmarks/extract_speed.py --device cuda --images 64 --batch-size 16 --compile
Example (CPU, small)::

    python benchmarks/extract_speed.py --device cpu --images 4 --width 512 --height 384
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F

from lit.bench import print_report
from lit.models import ModelConfig, SuperFeatureModel


def naive_extract(model, image, scales, k):
    """The straightforward way: one image, one scale at a time, pooling on the host."""
    mean = torch.tensor(model.cfg.runtime.mean, device=image.device).view(1, 3, 1, 1)
    std = torch.tensor(model.cfg.runtime.std, device=image.device).view(1, 3, 1, 1)
    x = (image[None] - mean) / std
    descs, strengths, sc, ids = [], [], [], []
    with torch.no_grad():
        for s in scales:
            xs = F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False) if s != 1 else x
            feats, _ = model.lit(model.backbone(xs))
            stren = torch.sqrt((feats ** 2).sum(-1) + 1e-10)[0]
            red = F.conv2d(feats.permute(0, 2, 1)[..., None], model.dim_reduction.weight, model.dim_reduction.bias)[0, :, :, 0].T
            descs.append(red.cpu().numpy())
            strengths.append(stren.cpu().numpy())
            sc.append(np.full(len(stren), s, np.float32))
            ids.append(np.arange(len(stren)))
    strengths = np.concatenate(strengths)
    order = np.argsort(-strengths, kind="stable")[:k]
    return np.concatenate(descs)[order], strengths[order], np.concatenate(sc)[order], np.concatenate(ids)[order]


class CompileWatch:
    """``torch.compile`` of the backbone and LIT with one static graph per input shape.

    ``dynamic=False`` compiles one graph per shape (7 scales x each batch size), more than
    dynamo's default ``recompile_limit`` (8), past which it silently runs eager: the limit
    is raised to ``limit``. :meth:`mark_warm` is called after every shape has been run
    once; :meth:`report` then says whether graphs were still compiled later (inside a timed
    loop) and whether dynamo hit its limit and fell back to eager.
    """

    def __init__(self, model, limit: int = 64) -> None:
        import logging

        import torch._dynamo

        self.counters = torch._dynamo.utils.counters
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, limit)
        torch._dynamo.config.accumulated_recompile_limit = max(torch._dynamo.config.accumulated_recompile_limit, 4 * limit)
        self.fallbacks: list[str] = []
        watch = self

        class _Handler(logging.Handler):
            def emit(self, record):
                msg = record.getMessage()
                if "recompile_limit" in msg or "cache_size_limit" in msg:
                    watch.fallbacks.append(msg.splitlines()[0])

        logging.getLogger("torch._dynamo").addHandler(_Handler())
        model.backbone = torch.compile(model.backbone, dynamic=False)
        model.lit = torch.compile(model.lit, dynamic=False)
        self.warm_graphs = None

    def graphs(self) -> int:
        return int(self.counters["stats"]["unique_graphs"])

    def mark_warm(self) -> None:
        self.warm_graphs = self.graphs()

    def report(self) -> dict:
        return {"graphs": self.graphs(), "compiled_after_warmup": self.graphs() - (self.warm_graphs or 0),
                "fell_back_to_eager": bool(self.fallbacks), "fallback_messages": self.fallbacks[:3]}


def _sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timeit(fn, n_images, device, warmup=1):
    for _ in range(warmup):
        fn(warm=True)
    _sync(device)
    t = time.perf_counter()
    fn(warm=False)
    _sync(device)
    dt = time.perf_counter() - t
    return {"images_per_s": n_images / dt, "ms_per_image": 1000 * dt / n_images}


def agreement(ref, fast, k):
    keys_r = {(round(float(s), 3), int(i)): j for j, (s, i) in enumerate(zip(ref.scales, ref.superfeature_ids))}
    keys_f = {(round(float(s), 3), int(i)): j for j, (s, i) in enumerate(zip(fast.scales, fast.superfeature_ids))}
    common = sorted(set(keys_r) & set(keys_f))
    rel = 0.0
    if common:
        a = ref.descriptors[[keys_r[c] for c in common]]
        b = fast.descriptors[[keys_f[c] for c in common]]
        rel = float(((a - b).norm(dim=1) / a.norm(dim=1).clamp_min(1e-12)).max())
    return len(common) / max(1, len(ref)), rel


def asmk_spearman(ref_feats, fast_feats, seed=0):
    """Spearman correlation between ASMK scores computed from fp32 and fast-path features."""
    try:
        from scipy.stats import spearmanr

        from lit.asmk import ASMK
    except ImportError:
        return None
    desc = torch.cat([f.descriptors for f in ref_feats]).numpy()
    index_kw = dict(binary=True)
    codebook = ASMK.train(desc, size=min(256, len(desc) // 4), seed=seed).codebook
    out = []
    for feats in (ref_feats, fast_feats):
        idx = ASMK(codebook, **index_kw)
        d = torch.cat([f.descriptors for f in feats]).numpy()
        ids = np.concatenate([np.full(len(f), i) for i, f in enumerate(feats)])
        idx.add(d, ids)
        out.append(np.asarray(idx.scores(d, ids)))
    mask = ~np.eye(out[0].shape[0], dtype=bool)
    return float(spearmanr(out[0][mask], out[1][mask]).statistic)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--images", type=int, default=8, help="number of (random) images")
    p.add_argument("--width", type=int, default=1024)
    p.add_argument("--height", type=int, default=768)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--features-num", type=int, default=1000)
    p.add_argument("--scales", default="2,1.414,1,0.707,0.5,0.353,0.25")
    p.add_argument("--backbone", default="resnet50")
    p.add_argument("--lit", default="6,256,1024", help="T,N,dim")
    p.add_argument("--checkpoint", default=None, help="a real checkpoint instead of random weights")
    p.add_argument("--compile", action="store_true", help="torch.compile the backbone and LIT (CUDA)")
    p.add_argument("--skip-naive", action="store_true")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default=None, help="also write the JSON here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dev = args.device
    scales = tuple(float(s) for s in args.scales.split(","))
    if args.checkpoint:
        import lit

        model = lit.load_model(args.checkpoint, device=dev)
    else:
        from lit.models import BackboneConfig, LITConfig

        t, n, d = (int(v) for v in args.lit.split(","))
        model = SuperFeatureModel(ModelConfig(backbone=BackboneConfig(args.backbone, 3), lit=LITConfig(T=t, N=n, dim=d))).to(dev)
    model.eval()
    images = torch.rand(args.images, 3, args.height, args.width, generator=torch.Generator().manual_seed(0))
    # smooth random images: closer to photos than white noise
    images = F.interpolate(F.interpolate(images, scale_factor=1 / 16, mode="area"), size=(args.height, args.width), mode="bilinear")
    images_dev = images.to(dev)
    k = args.features_num
    res = {"device": torch.cuda.get_device_name() if dev.startswith("cuda") else f"cpu ({torch.get_num_threads()} threads)",
           "torch": torch.__version__, "image_size": [args.width, args.height], "scales": scales, "features_num": k,
           "images": args.images, "backbone": args.backbone, "lit": args.lit}

    ref_feats = []

    def run_fp32(warm):
        for i in range(1 if warm else args.images):
            f = model.extract(images_dev[i], scales=scales, features_num=k)
            if not warm:
                ref_feats.append(f)

    if not args.skip_naive:
        res["naive_batch1_fp32"] = _timeit(lambda warm: [naive_extract(model, images_dev[i], scales, k) for i in range(1 if warm else args.images)], args.images, dev)
    if dev.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    res["lit_fp32_batch1"] = _timeit(run_fp32, args.images, dev)
    if dev.startswith("cuda"):
        res["lit_fp32_batch1"]["peak_memory_gb"] = torch.cuda.max_memory_allocated() / 2**30
    if "naive_batch1_fp32" in res:
        res["fp32_speedup_vs_naive"] = res["naive_batch1_fp32"]["ms_per_image"] / res["lit_fp32_batch1"]["ms_per_image"]

    fast_model = model
    watch = None
    if dev.startswith("cuda"):
        torch.backends.cudnn.benchmark = True
        fast_model.to_channels_last()
        if args.compile:
            watch = CompileWatch(fast_model)
    amp = torch.bfloat16
    fast_feats = []
    # every batch size of the timed loop (the last batch may be smaller), each at all scales
    sizes = sorted({min(args.batch_size, args.images - s) for s in range(0, args.images, args.batch_size)})

    def run_fast(warm):
        if warm:
            for b in sizes:
                fast_model.extract_batch(images_dev[:b], scales=scales, features_num=k, amp=amp)
            if watch is not None:
                watch.mark_warm()
            return
        for s in range(0, args.images, args.batch_size):
            out = fast_model.extract_batch(images_dev[s:s + args.batch_size], scales=scales, features_num=k, amp=amp)
            fast_feats.extend(out)

    if dev.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    res["lit_fast_bf16"] = _timeit(run_fast, args.images, dev, warmup=2 if args.compile else 1)
    res["lit_fast_bf16"]["batch_size"] = args.batch_size
    if watch is not None:
        res["lit_fast_bf16"]["compile"] = watch.report()
    if dev.startswith("cuda"):
        res["lit_fast_bf16"]["peak_memory_gb"] = torch.cuda.max_memory_allocated() / 2**30
    shares, errs = zip(*(agreement(r, f, k) for r, f in zip(ref_feats, fast_feats)))
    res["agreement"] = {
        "kept_feature_share_min": min(shares), "kept_feature_share_mean": float(np.mean(shares)),
        "max_relative_descriptor_error": max(errs),
        "asmk_score_spearman": asmk_spearman(ref_feats, fast_feats) if args.images >= 3 else None,
    }
    print_report(res, args.json, indent=1)


if __name__ == "__main__":
    main()
