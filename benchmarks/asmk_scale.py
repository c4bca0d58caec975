"""How lit's ASMK grows with the database: build time, bytes per image, peak memory and
query time at growing sizes, a fitted growth exponent, and a projection to 1M images.

Synthetic data, FIRe's setting: 128-d descriptors, K = 65,536 random centres used as the
codebook, a skewed word popularity, ``--descriptors`` (1000) descriptors per image =
centre + noise. Descriptors are generated per chunk of images and streamed into the index
(never all held: 100k x 1000 x 128 float32 would be 51 GB).

Database word assignment is *simulated* (the generating centre of each descriptor): exact
nearest-word search of 1e8 descriptors against 65,536 words is ~1.7e15 flop, hours on a
CPU. It is measured on a sample instead (``quantize_desc_per_s``, faiss / torch, exact) and
added as ``quantize_projected_s`` to give ``build_incl_quantize_projected_s``. Queries are
quantised exactly (m = 5) and timed as a user runs them: ``ASMK.search(topk=100)`` on raw
descriptors, all queries at once.

Each size runs in its own process. Memory: ``build_peak_rss_gb`` is the peak resident set
of the build (pending entries and flush included); the index is then saved, freed and
loaded again after resetting the peak (``/proc/self/clear_refs``), so
``search_peak_rss_gb`` is the peak of load + queries (the index itself included).

Usage::

    nice -n 10 python benchmarks/asmk_scale.py                      # 1k, 10k, 100k images
    python benchmarks/asmk_scale.py --sizes 1000,3000 --queries 20   # quick
    python benchmarks/asmk_scale.py --sizes 100000 --queries 1000    # the 4 GB check

Prints one JSON object.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see asmk_speed.py

import argparse  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from lit.asmk import ASMK, faiss_available  # noqa: E402

DIM = 128
NOISE = 0.3
NOISE_POOL = 1 << 20  # descriptors' noise is drawn from a fixed pool: generation stays cheap


def _rss_gb(field: str) -> float:
    with open("/proc/self/status") as f:
        kb = int(re.search(rf"{field}:\s+(\d+)", f.read()).group(1))
    return kb / 2**20


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _malloc_trim() -> None:
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_size(n_img: int, args) -> dict:
    device = torch.device(args.device)
    gen = torch.Generator().manual_seed(args.seed)
    k, n_desc = args.words, args.descriptors
    codebook = torch.randn(k, DIM, generator=gen)
    weights = 1.0 / (torch.arange(k, dtype=torch.float64) + 20.0) ** 0.7
    weights = weights[torch.randperm(k, generator=gen)]
    pool = torch.randn(NOISE_POOL, DIM, generator=gen) * NOISE
    cdf = torch.cumsum(weights, 0)
    index = ASMK(codebook, device=device)
    chunk = max(1, args.chunk_descriptors // n_desc)
    t_gen = t_build = 0.0
    for start in range(0, n_img, chunk):
        stop = min(n_img, start + chunk)
        t0 = time.perf_counter()
        m = (stop - start) * n_desc
        words = torch.searchsorted(cdf, torch.rand(m, generator=gen, dtype=torch.float64) * cdf[-1]).clamp_max(k - 1)
        off = int(torch.randint(0, NOISE_POOL - m + 1, (1,), generator=gen)) if m < NOISE_POOL else 0
        ids = torch.arange(start, stop).repeat_interleave(n_desc)
        if args.build == "entries":  # aggregated entries drawn directly: one per (image, word)
            keys = torch.unique(ids * k + words)
            vectors = torch.randint(0, 256, (keys.shape[0], 16), dtype=torch.uint8, generator=gen)
            t_gen += time.perf_counter() - t0
            t0 = time.perf_counter()
            index.ivf.add_entries(keys % k, keys // k, vectors)
            t_build += time.perf_counter() - t0
            del keys, vectors
            continue
        x = codebook[words]
        for a in range(0, m, NOISE_POOL):  # noise: a contiguous window of the pool
            x[a : a + NOISE_POOL] += pool[off : off + min(NOISE_POOL, m - a)]
        x, ids, words = x.to(device), ids.to(device), words.to(device)
        t_gen += time.perf_counter() - t0
        _sync(device)
        t0 = time.perf_counter()
        index.add(x, ids, words=words.unsqueeze(1))
        _sync(device)
        t_build += time.perf_counter() - t0
        del x, ids, words
    del pool
    gc.collect()
    t0 = time.perf_counter()
    index.flush()
    _sync(device)
    t_build += time.perf_counter() - t0
    build_peak = _rss_gb("VmHWM")
    stats = index.stats()

    # exact quantisation rate on a sample (the database assignment above is simulated)
    sample = (codebook[torch.multinomial(weights, args.quantize_sample, replacement=True, generator=gen)]
              + torch.randn(args.quantize_sample, DIM, generator=gen) * NOISE).to(device)
    index.quantize(sample[:1000])
    _sync(device)
    t0 = time.perf_counter()
    index.quantize(sample)
    _sync(device)
    rate = args.quantize_sample / (time.perf_counter() - t0)
    del sample

    # save, free, reload with a fresh peak: the search-side memory
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        path = os.path.join(tmp, "index.h5")
        t0 = time.perf_counter()
        index.save(path)
        t_save = time.perf_counter() - t0
        del index
        gc.collect()
        # the queries (held by the caller) are made before the reset: not search memory
        nq = args.queries
        qwords = torch.multinomial(weights, nq * n_desc, replacement=True, generator=gen)
        qx = (codebook[qwords] + torch.randn(nq * n_desc, DIM, generator=gen) * NOISE).to(device)
        qids = torch.arange(nq).repeat_interleave(n_desc).to(device)
        words = None
        if args.query_assignment == "simulated":  # generating centre + 4 words drawn by popularity
            extra = torch.multinomial(weights, nq * n_desc * 4, replacement=True, generator=gen).view(-1, 4)
            words = torch.cat([qwords.unsqueeze(1), extra], 1).to(device)
        gc.collect()
        _malloc_trim()  # give freed heap pages back, so that the search peak is the search's
        reset = _reset_peak()
        t0 = time.perf_counter()
        index = ASMK.load(path, device=device)
        t_load = time.perf_counter() - t0
        after_load = _rss_gb("VmRSS")
        file_bytes = os.path.getsize(path)
    index.search(qx[:n_desc], qids[:n_desc], topk=100, words=None if words is None else words[:n_desc])  # warm-up
    _sync(device)
    t0 = time.perf_counter()
    res = index.search(qx, qids, topk=100, words=words)
    _sync(device)
    t_search = time.perf_counter() - t0
    assert res.ranks.shape == (nq, min(100, n_img))
    out = {
        "images": n_img, "descriptors_per_image": n_desc, "words": k, "device": str(device),
        "db_assignment": "simulated (generating centre)" if args.build == "add" else
        "aggregated entries drawn directly (build_s is not an ASMK.add time)",
        "generate_s": round(t_gen, 2), "build_s": round(t_build, 2),
        "quantize_desc_per_s": round(rate), "quantize_projected_s": round(n_img * n_desc / rate, 1),
        "build_incl_quantize_projected_s": round(t_build + n_img * n_desc / rate, 1),
        "vectors": stats["vectors"], "vectors_per_image": round(stats["vectors"] / n_img, 1),
        "index_bytes": stats["bytes"], "bytes_per_image": round(stats["bytes"] / n_img, 1),
        "file_bytes": file_bytes, "save_s": round(t_save, 2), "load_s": round(t_load, 2),
        "build_peak_rss_gb": round(build_peak, 3),
        "rss_after_load_gb": round(after_load, 3),
        "search_peak_rss_gb": round(_rss_gb("VmHWM"), 3) if reset else None,
        "queries": nq, "query_assignment": "exact (m=5), timed" if words is None else
        "simulated (not timed; add 5-NN quantisation: ~ quantize_desc_per_s per descriptor)",
        "search_s": round(t_search, 2), "ms_per_query": round(1000 * t_search / nq, 2),
    }
    if device.type == "cuda":
        out["gpu_peak_gb"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    return out


def _fit(sizes, values):
    """Exponent b and constant a of values ~ a * size**b (least squares in log-log)."""
    x, y = np.log(np.asarray(sizes, float)), np.log(np.asarray(values, float))
    b, log_a = np.polyfit(x, y, 1)
    return float(b), float(math.exp(log_a))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,10000,100000", help="comma-separated database sizes (images)")
    parser.add_argument("--descriptors", type=int, default=1000, help="descriptors per image")
    parser.add_argument("--words", type=int, default=65536, help="codebook size K")
    parser.add_argument("--queries", type=int, default=100, help="query images per size")
    parser.add_argument("--query-assignment", choices=("search", "simulated"), default="search",
                        help="query words: exact 5-NN search (timed) or simulated (scoring and memory only)")
    parser.add_argument("--build", choices=("add", "entries"), default="add",
                        help="add descriptors (aggregation timed) or draw aggregated entries directly (fast; memory checks)")
    parser.add_argument("--quantize-sample", type=int, default=50_000, help="descriptors of the quantisation timing")
    parser.add_argument("--chunk-descriptors", type=int, default=250_000, help="descriptors generated per chunk")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--project", type=int, default=1_000_000, help="project to this many images")
    parser.add_argument("--tmp", default=None, help="folder for the saved index (default: system temp)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per size before giving up on it")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one is not None:
        print(json.dumps(run_size(args.one, args)))
        return None
    out = {"torch": torch.__version__, "threads": torch.get_num_threads(), "faiss": faiss_available(),
           "device": args.device, "sizes": []}
    passthrough = [f"--{key.replace('_', '-')}={value}" for key, value in vars(args).items()
                   if key not in ("sizes", "one") and value is not None]
    for n in [int(s) for s in args.sizes.split(",") if s]:
        cmd = [sys.executable, os.path.abspath(__file__), *passthrough, "--one", str(n)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
        except subprocess.TimeoutExpired:
            out["sizes"].append({"images": n, "skipped": f"did not finish within --timeout {args.timeout:.0f} s"})
            print(json.dumps(out["sizes"][-1]), file=sys.stderr)
            continue
        if proc.returncode != 0:
            out["sizes"].append({"images": n, "error": proc.stderr.strip().splitlines()[-1:]})
            continue
        out["sizes"].append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(json.dumps(out["sizes"][-1]), file=sys.stderr)
    done = [r for r in out["sizes"] if "build_s" in r]
    if len(done) >= 2:
        sizes = [r["images"] for r in done]
        proj = {}
        for key in ("build_s", "build_incl_quantize_projected_s", "ms_per_query", "index_bytes"):
            vals = [r[key] for r in done]
            if any(v is None or v <= 0 for v in vals):
                continue
            b, a = _fit(sizes, vals)
            proj[key] = {"exponent": round(b, 3), f"at_{args.project}": round(a * args.project**b, 3)}
        for key in ("search_peak_rss_gb", "build_peak_rss_gb"):  # a fixed base + a cost per image
            vals = [r[key] for r in done]
            if any(v is None for v in vals):
                continue
            slope, base = np.polyfit(np.asarray(sizes, float), np.asarray(vals, float), 1)
            proj[key] = {"base_gb": round(float(base), 3), "kb_per_image": round(float(slope) * 2**20, 2),
                         f"at_{args.project}": round(float(base + slope * args.project), 2)}
        out["growth"] = proj
        out["fitted_on"] = sizes
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
