"""Exact kNN and Recall@k speed on SOP-sized data, agreement with a brute-force argsort and
with pytorch-metric-learning's own search; prints JSON.

All-vs-all search of ``--n`` L2-normalised ``--dim``-d vectors (default 60,000 x 512, the size
of the Stanford Online Products test set; ``--n / 5.3`` classes of noisy copies of random
centres, as SOP has 5.3 images per product), each query excluded from its own results,
``k = 1000`` (what Recall@1000 needs):

- ``torch`` / ``faiss``: :func:`lit.metric.knn` on the CPU and on CUDA when available, and
  with its faiss backend. The reference is the brute force: per chunk of queries, the full
  similarity row, the query itself set to ``-inf``, then a stable ``argsort`` of the whole
  row (ties: lower index first). The chunks are the same as the kNN's, so both see
  bit-identical similarities and must return identical lists.
- ``lit-torch`` / ``pml-faiss``: Recall@1/10/100/1000 through pytorch-metric-learning's
  ``AccuracyCalculator`` (:class:`lit.metric.RecallAtK`), with lit's exact kNN
  (:class:`lit.metric.ExactKNN`, the default of :func:`lit.metric.recall_at_ks`) and with
  PML's default ``FaissKNN`` (``faiss.IndexFlatL2``, CPU with faiss-cpu); the recalls must be
  equal.

Example::

    python benchmarks/knn_speed.py                      # CPU (+ CUDA if available)
    python benchmarks/knn_speed.py --n 20000 --no-check # quicker
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import torch

from lit.metric import DEFAULT_KS, faiss_available, knn, recall_at_ks


def brute_force(x: torch.Tensor, k: int, chunk_size: int, device: torch.device) -> torch.Tensor:
    """Neighbour indices by a stable argsort of each full similarity row, self excluded."""
    db = x.to(device)
    out = []
    for start in range(0, x.shape[0], chunk_size):
        sims = x[start:start + chunk_size].to(device) @ db.T
        rows = torch.arange(sims.shape[0], device=device)
        sims[rows, rows + start] = float("-inf")
        out.append(torch.argsort(sims, dim=1, descending=True, stable=True)[:, :k].clone().cpu())  # clone: free the full rows
    return torch.cat(out)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=60000, help="vectors (default 60000)")
    parser.add_argument("--dim", type=int, default=512, help="dimension (default 512)")
    parser.add_argument("--k", type=int, default=1000, help="neighbours (default 1000)")
    parser.add_argument("--chunk-size", type=int, default=512, help="queries per block, for kNN and reference (default 512)")
    parser.add_argument("--devices", default=None, help="comma-separated devices (default: cpu, and cuda when available)")
    parser.add_argument("--no-check", action="store_true", help="skip the brute-force comparison")
    parser.add_argument("--no-recall", action="store_true", help="skip the Recall@k runs (AccuracyCalculator)")
    parser.add_argument("--noise", type=float, default=2.5, help="noise around the class centres, per dimension (default 2.5: R@1 about 0.6)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="also write the JSON here")
    args = parser.parse_args(argv)

    gen = torch.Generator().manual_seed(args.seed)
    classes = max(1, round(args.n / 5.3))
    labels = torch.randint(0, classes, (args.n,), generator=gen)
    centres = torch.randn(classes, args.dim, generator=gen)
    x = torch.nn.functional.normalize(centres[labels] + args.noise * torch.randn(args.n, args.dim, generator=gen), dim=1)
    devices = args.devices.split(",") if args.devices else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    report = {
        "n": args.n, "dim": args.dim, "k": args.k, "chunk_size": args.chunk_size, "classes": classes,
        "torch": torch.__version__, "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        "machine": platform.processor() or platform.machine(), "runs": [],
    }
    results = {}
    for name in devices:
        device = torch.device(name)
        if device.type == "cuda":
            report["gpu"] = torch.cuda.get_device_name(device)
            knn(x[:64], x, 10, device=device)  # warm-up (CUDA context, kernels)
        _sync(device)
        t0 = time.perf_counter()
        res = knn(x, None, args.k, exclude_self=True, chunk_size=args.chunk_size, device=device)
        _sync(device)
        results[name] = res
        run = {"backend": "torch", "device": name, "seconds": time.perf_counter() - t0}
        run["queries_per_second"] = args.n / run["seconds"]
        if not args.no_check:
            t0 = time.perf_counter()
            ref = brute_force(x, args.k, args.chunk_size, device)
            _sync(device)
            run["brute_force_seconds"] = time.perf_counter() - t0
            run["identical_to_brute_force"] = bool(torch.equal(res.indices, ref))
            run["rows_differing"] = int((res.indices != ref).any(1).sum())
        report["runs"].append(run)
        print(json.dumps(run), file=sys.stderr, flush=True)
    if faiss_available():
        t0 = time.perf_counter()
        fres = knn(x, None, args.k, exclude_self=True, chunk_size=args.chunk_size, device="cpu", backend="faiss")
        run = {"backend": "faiss", "device": "cpu", "seconds": time.perf_counter() - t0}
        run["queries_per_second"] = args.n / run["seconds"]
        if "cpu" in results:  # faiss's own BLAS: last-bit differences can reorder near-ties
            run["rows_same_as_torch_cpu"] = float((fres.indices == results["cpu"].indices).all(1).float().mean())
        report["runs"].append(run)
    if not args.no_recall:
        ks = [k for k in DEFAULT_KS if k <= args.k]
        recalls = {}
        for name in devices:
            device = torch.device(name)
            _sync(device)
            t0 = time.perf_counter()
            recalls[name] = recall_at_ks(x, labels, ks, chunk_size=args.chunk_size, device=device)
            _sync(device)
            run = {"backend": "lit-torch", "what": "AccuracyCalculator + lit ExactKNN", "device": name,
                   "seconds": time.perf_counter() - t0, "recall": {str(k): v for k, v in recalls[name].items()}}
            report["runs"].append(run)
            print(json.dumps(run), file=sys.stderr, flush=True)
        if faiss_available():
            from pytorch_metric_learning.utils.inference import FaissKNN

            t0 = time.perf_counter()
            pml = recall_at_ks(x, labels, ks, device="cpu", knn_func=FaissKNN())
            run = {"backend": "pml-faiss", "what": "AccuracyCalculator + PML FaissKNN (IndexFlatL2)", "device": "cpu",
                   "seconds": time.perf_counter() - t0, "recall": {str(k): v for k, v in pml.items()},
                   "recall_equal_to_lit": pml == recalls[devices[0]]}
            report["runs"].append(run)
            print(json.dumps(run), file=sys.stderr, flush=True)
    text = json.dumps(report, indent=1)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text)
    failed = any(r.get("identical_to_brute_force") is False or r.get("recall_equal_to_lit") is False for r in report["runs"])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
