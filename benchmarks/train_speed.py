"""Training speed and memory: tuples per second of the FIRe recipe, fp32 against bf16.

One tuple is a query, a positive and ``K`` negatives (random images of one size); each
goes forward and backward through :func:`lit.train.tuple_loss` exactly as in
:class:`lit.train.Trainer` (one image at a time, gradient accumulation over
``tuples_per_step`` tuples, one Adam step per step). Weights are random: speed does not
depend on them.

Memory: on CUDA ``torch.cuda.max_memory_allocated`` during the timed steps; on CPU the
peak resident set size of the process while timing (sampled every 5 ms), and the RSS
before the run.

Usage::

    python benchmarks/train_speed.py                          # FIRe ResNet-50, 1024x768, 5 negatives
    python benchmarks/train_speed.py --precision bf16 --steps 4
    python benchmarks/train_speed.py --quick                  # tiny model and images, seconds on a CPU

Prints one JSON object.
"""

from __future__ import annotations

import os

# On a shared machine, OpenMP threads that spin at barriers while another process holds
# a core make every op much slower; passive waiting avoids that (an explicit setting wins).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

from lit.models import BackboneConfig, LITConfig, ModelConfig, RuntimeConfig, SuperFeatureModel  # noqa: E402
from lit.train import LossConfig, tuple_loss  # noqa: E402
from lit.train.trainer import autocast_factory, resolve_device  # noqa: E402

TINY = ModelConfig(
    backbone=BackboneConfig("resnet18", 3), lit=LITConfig(T=2, N=8, dim=32), reduction_dim=16,
    runtime=RuntimeConfig(image_size=96),
)


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):  # not Linux: peak RSS of the process so far
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class _PeakRSS:
    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_bytes())
            time.sleep(0.005)

    def __enter__(self) -> _PeakRSS:
        self.peak = _rss_bytes()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_bytes())


def bench(cfg: ModelConfig, device: torch.device, precision: str, width: int, height: int,
          negatives: int, tuples_per_step: int, steps: int, warmup: int, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    model = SuperFeatureModel(cfg).to(device)
    model.dim_reduction.requires_grad_(False)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=3e-5, weight_decay=1e-4)
    autocast = autocast_factory(device, precision)
    g = torch.Generator().manual_seed(seed)
    images = [torch.rand(3, height, width, generator=g).to(device) for _ in range(2 + negatives)]
    loss_cfg = LossConfig()
    scales = tuple(cfg.runtime.training_scales)

    def step() -> torch.Tensor:
        total = torch.zeros((), device=device)  # summed on the device: no host sync per tuple
        for _ in range(tuples_per_step):
            out = tuple_loss(model, images, loss_cfg, scales, autocast)
            (out.loss / tuples_per_step).backward()
            total += out.loss.detach()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return total / tuples_per_step

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        step()
    sync()
    rss_before = _rss_bytes()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with _PeakRSS() as rss:
        t0 = time.perf_counter()
        for _ in range(steps):
            loss = step()
        sync()
        elapsed = time.perf_counter() - t0
    n = steps * tuples_per_step
    result = {
        "tuples_per_s": n / elapsed,
        "s_per_tuple": elapsed / n,
        "images_per_tuple": 2 + negatives,
        "tuples": n,
        "last_loss": float(loss),
    }
    if device.type == "cuda":
        result["peak_memory_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        result["memory"] = "cuda max_memory_allocated"
    else:
        result["peak_memory_mb"] = rss.peak / 2**20
        result["rss_before_mb"] = rss_before / 2**20
        result["memory"] = "process RSS peak while timing"
    return result


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=["fire", "tiny"], default="fire",
                   help="fire: ResNet-50 conv4 + LIT 6/256/1024 + 128-d; tiny: ResNet-18 + LIT 2/8/32")
    p.add_argument("--size", default="1024x768", help="WIDTHxHEIGHT of every image (default 1024x768)")
    p.add_argument("--negatives", type=int, default=5)
    p.add_argument("--tuples-per-step", type=int, default=5)
    p.add_argument("--steps", type=int, default=2, help="timed optimiser steps")
    p.add_argument("--warmup", type=int, default=1, help="untimed optimiser steps first")
    p.add_argument("--precision", default="fp32,bf16", help="comma list of fp32, bf16")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads on CPU")
    p.add_argument("--quick", action="store_true", help="tiny model, 96x72 images, 1 step of 2 tuples")
    args = p.parse_args(argv)
    if args.quick:
        args.model, args.size, args.tuples_per_step, args.steps, args.warmup = "tiny", "96x72", 2, 1, 1
    if args.threads:
        torch.set_num_threads(args.threads)
    width, height = (int(v) for v in args.size.lower().split("x"))
    device = resolve_device(args.device)
    cfg = TINY if args.model == "tiny" else ModelConfig()
    results = {}
    for precision in [s.strip() for s in args.precision.split(",") if s.strip()]:
        results[precision] = bench(cfg, device, precision, width, height, args.negatives,
                                   args.tuples_per_step, args.steps, args.warmup)
    out = {
        "benchmark": "train_speed",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
        "torch": torch.__version__,
        "model": args.model,
        "image_size": [width, height],
        "negatives": args.negatives,
        "tuples_per_step": args.tuples_per_step,
        "training_scales": list(cfg.runtime.training_scales),
        "note": "bf16 = torch.autocast(bfloat16) around the network; losses in fp32. "
                "The trainer uses bf16 on CUDA and fp32 on CPU (precision: auto).",
        "results": results,
    }
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
