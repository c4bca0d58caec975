"""Speed of ``lit.asmk.ASMK`` against the asmk package (the one FIRe uses) and a
straightforward per-word-loop implementation, in one run on the same data.

Synthetic clustered descriptors: K random centres (used directly as the codebook, no
k-means, given to every implementation), a skewed word popularity, and descriptors =
centre + Gaussian noise. Queries are noisy copies of half the descriptors of a database
image plus random descriptors.

Cases (binary mode, FIRe defaults: alpha 3, tau 0, no idf, m = 1 / query m = 5):

- ``a``: 1000 images x 1000 descriptors, K = 16384, on CPU;
- ``b``: ROxford scale, 5000 images x 1000 descriptors, K = 65536;
- ``c``: a simulated 1M-image database (aggregated entries drawn directly, no
  descriptors) on GPU; skipped without CUDA.

For ``a`` and ``b``:

- ``lit``: ``build_incl_quantize_s`` is ``ASMK.add`` from raw descriptors (nearest-word
  search included) plus the final flush; ``quantize_db_s`` is ``ASMK.quantize`` alone,
  next to ``faiss_bruteforce_s``, faiss ``IndexFlatL2`` brute force on the same
  descriptors, and whether their assignments are identical; ``search_ms`` is
  ``ASMK.search(topk=100)`` from raw query descriptors (quantisation included), for all
  queries at once and one query at a time; ``query_ms`` is scoring alone (words given).
- ``asmk_package`` (when ``pip install asmk``, the ``bench`` extra, is there; skipped with
  a line saying so otherwise): its ``IvfBuilder.add`` (quantisation included) and
  ``query_ivf`` (one query at a time, quantisation included) on the same codebook and
  data; ``top10_agreement_lit_asmk`` is the fraction of queries whose top-10 lists are
  identical.
- ``reference``: the loop implementation below, given lit's words (no quantisation), and
  the agreement of its dense scores with lit's.

On a CPU the database assignment of large cases is *simulated* (the generating centre of
each descriptor) when the exact search would take most of an hour; then only lit's
scoring is compared.

Usage::

    python benchmarks/asmk_speed.py --cases a  # the acceptance case (1000 images, K=16384)
    python benchmarks/asmk_speed.py --quick    # small sizes, a few seconds
    python benchmarks/asmk_speed.py --cases a --images 500 --queries 20

Prints one JSON object.
"""

from __future__ import annotations

import os

# On a shared machine, OpenMP threads that spin at barriers while another process holds
# the other core make every torch op many times slower; passive waiting avoids that.
# Must be set before torch loads OpenMP; an explicit setting in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from lit.asmk import ASMK  # noqa: E402

try:  # the asmk package (pip install asmk): compared in the same run when present
    import asmk as _asmk_pkg  # noqa: E402
    from asmk import asmk_method as _asmk_method  # noqa: E402
    from asmk import codebook as _asmk_codebook  # noqa: E402
    from asmk import index as _asmk_index  # noqa: E402
except ImportError:  # pragma: no cover - depends on the environment
    _asmk_pkg = None
try:
    import faiss  # noqa: E402
except ImportError:  # pragma: no cover
    faiss = None

FULL = {
    "a": {"images": 1000, "descriptors": 1000, "words": 16384},
    "b": {"images": 5000, "descriptors": 1000, "words": 65536},
    "c": {"images": 1_000_000, "vectors_per_image": 500, "words": 65536},
}
QUICK = {
    "a": {"images": 200, "descriptors": 300, "words": 2048},
    "b": {"images": 300, "descriptors": 500, "words": 4096},
    "c": {"images": 20_000, "vectors_per_image": 100, "words": 4096},
}
DIM = 128
NOISE = 0.3
CPU_SEARCH_LIMIT = 3e12  # N * K * D above which the CPU database assignment is simulated


# ----------------------------------------------------------------------------- straightforward reference


_POPCOUNT8 = np.array([bin(i).count("1") for i in range(256)], dtype=np.int64)


class LoopASMK:
    """Plain per-image, per-word implementation in numpy (how the original package works).

    Database: for each image, for each of its words, sum the residuals of the
    descriptors assigned to it, binarise/normalise, and append to that word's posting
    list. Query: for each query word, look its posting list up, compute the similarities
    with each entry and accumulate into the image scores.
    """

    def __init__(self, codebook: np.ndarray, binary=True, alpha=3.0, tau=0.0, use_idf=False):
        self.codebook = codebook.astype(np.float32)
        self.binary, self.alpha, self.tau, self.use_idf = binary, alpha, tau, use_idf
        self.lists: dict[int, tuple[list, list]] = {}

    def _aggregate(self, x, words):
        out = {}
        for w in np.unique(words):
            mask = (words == w).any(axis=1)
            residual = (x[mask] - self.codebook[w]).sum(axis=0)
            if self.binary:
                out[int(w)] = np.packbits(residual > 0)
            else:
                out[int(w)] = residual / (np.linalg.norm(residual) + 1e-6)
        return out

    def add(self, x, image_ids, words):
        order = np.argsort(image_ids, kind="stable")
        x, image_ids, words = x[order], image_ids[order], words[order]
        images, starts = np.unique(image_ids, return_index=True)
        bounds = list(starts) + [len(image_ids)]
        for i, image in enumerate(images):
            sl = slice(bounds[i], bounds[i + 1])
            for w, vec in self._aggregate(x[sl], words[sl]).items():
                entry = self.lists.setdefault(w, ([], []))
                entry[0].append(int(image))
                entry[1].append(vec)

    def finalize(self):
        self.ivf = {w: (np.array(ids), np.stack(vecs)) for w, (ids, vecs) in self.lists.items()}
        self.n_images = 1 + max(int(ids.max()) for ids, _ in self.ivf.values())
        self.idf = {}
        norms = np.zeros(self.n_images)
        for w, (ids, _) in self.ivf.items():
            self.idf[w] = math.log(self.n_images / len(ids)) ** 2 if self.use_idf else 1.0
            norms[ids] += self.idf[w]
        self.inv_norm = np.where(norms > 0, 1 / np.sqrt(np.maximum(norms, 1e-30)), 0.0)

    def query(self, x, words):
        scores = np.zeros(self.n_images)
        qnorm = 0.0
        for w, qvec in self._aggregate(x, words).items():
            idf = self.idf.get(w, 1.0)
            qnorm += idf
            if w not in self.ivf:
                continue
            ids, vecs = self.ivf[w]
            if self.binary:
                hamming = _POPCOUNT8[np.bitwise_xor(vecs, qvec)].sum(axis=1)
                sim = 1 - 2 * hamming / self.codebook.shape[1]
            else:
                sim = vecs @ qvec
            keep = sim >= self.tau
            scores[ids[keep]] += idf * sim[keep] ** self.alpha
        return scores * self.inv_norm / math.sqrt(qnorm)


# ----------------------------------------------------------------------------- synthetic data


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _popularity(k, gen):
    weights = 1.0 / (torch.arange(k, dtype=torch.float64) + 20.0) ** 0.7
    return weights[torch.randperm(k, generator=gen)]


def _descriptors(codebook, words, gen):
    noise = torch.randn(words.shape[0], codebook.shape[1], generator=gen) * NOISE
    return codebook[words] + noise


def run_case(name, cfg, args, device):
    gen = torch.Generator().manual_seed(args.seed)
    k, n_img, n_desc, nq = cfg["words"], cfg["images"], cfg["descriptors"], args.queries
    codebook = torch.randn(k, DIM, generator=gen)
    weights = _popularity(k, gen)
    total = n_img * n_desc
    search_db = args.assignment == "search" or (
        args.assignment == "auto" and (device.type == "cuda" or total * k * DIM <= CPU_SEARCH_LIMIT)
    )
    index = ASMK(codebook, device=device)
    ref = LoopASMK(codebook.numpy())
    sources = torch.randperm(n_img, generator=gen)[:nq].tolist()
    source_desc = {}
    res = {"images": n_img, "descriptors_per_image": n_desc, "words": k, "dim": DIM, "queries": nq,
           "db_assignment": "nearest-centroid search" if search_db else "simulated (generating centre)",
           "query_assignment": "nearest-centroid search (m=5)"}
    t_quant = t_build = t_ref_build = t_faiss = t_asmk_build = 0.0
    same_as_faiss = True
    flat = None
    if search_db and faiss is not None and device.type == "cpu":
        flat = faiss.IndexFlatL2(DIM)
        flat.add(codebook.numpy())
    pkg = _AsmkPackage(codebook.numpy(), n_desc) if (_asmk_pkg is not None and not args.no_asmk) else None
    for start in range(0, n_img, args.add_batch):
        stop = min(start + args.add_batch, n_img)
        gen_words = torch.multinomial(weights, (stop - start) * n_desc, replacement=True, generator=gen)
        x = _descriptors(codebook, gen_words, gen)
        ids = torch.arange(start, stop).repeat_interleave(n_desc)
        for s in sources:
            if start <= s < stop:
                source_desc[s] = x[(s - start) * n_desc : (s - start + 1) * n_desc]
        xd, idsd = x.to(device), ids.to(device)
        xn, idn = x.numpy(), ids.numpy()
        if search_db:
            # lit's quantisation and faiss brute force, in alternating order (load drifts)
            for first in ((True, False) if (start // args.add_batch) % 2 == 0 else (False, True)):
                if first:
                    _sync(device)
                    t0 = time.perf_counter()
                    words = index.quantize(xd)
                    _sync(device)
                    t_quant += time.perf_counter() - t0
                elif flat is not None:
                    t0 = time.perf_counter()
                    _, fwords = flat.search(xn, 1)
                    t_faiss += time.perf_counter() - t0
            if flat is not None:
                same_as_faiss &= bool(np.array_equal(fwords, words.cpu().numpy()))
            _sync(device)
            t0 = time.perf_counter()
            index.add(xd, idsd)  # quantises again, inside: the build as a user runs it
            _sync(device)
            t_build += time.perf_counter() - t0
        else:
            words = gen_words.unsqueeze(1).to(device)
            _sync(device)
            t0 = time.perf_counter()
            index.add(xd, idsd, words=words)
            _sync(device)
            t_build += time.perf_counter() - t0
        if pkg is not None:
            t0 = time.perf_counter()
            pkg.add(xn, idn, None if search_db else words.cpu().numpy())
            t_asmk_build += time.perf_counter() - t0
        if not args.no_reference:
            wn = words.cpu().numpy()
            t0 = time.perf_counter()
            ref.add(xn, idn, wn)
            t_ref_build += time.perf_counter() - t0
    t0 = time.perf_counter()
    index.flush()
    _sync(device)
    t_build += time.perf_counter() - t0
    if pkg is not None:
        t0 = time.perf_counter()
        pkg.finish()
        t_asmk_build += time.perf_counter() - t0
    if not args.no_reference:
        t0 = time.perf_counter()
        ref.finalize()
        t_ref_build += time.perf_counter() - t0

    # queries: half of a database image's descriptors, re-noised, plus random descriptors
    qx = []
    for s in sources:
        half = source_desc[s][torch.randperm(n_desc, generator=gen)[: n_desc // 2]]
        half = half + torch.randn(half.shape, generator=gen) * NOISE
        rand = _descriptors(codebook, torch.multinomial(weights, n_desc - half.shape[0], replacement=True,
                                                        generator=gen), gen)
        qx.append(torch.cat([half, rand]))
    qx = torch.cat(qx).to(device)
    qids = torch.arange(nq).repeat_interleave(n_desc).to(device)
    _sync(device)
    t0 = time.perf_counter()
    qwords = index.quantize(qx, m=index.params.query_multiple_assignment)
    _sync(device)
    t_qquant = time.perf_counter() - t0
    q_differ = None
    if flat is not None:  # not timed: the query words of faiss brute force, for agreement
        _, fq = flat.search(qx.cpu().numpy(), index.params.query_multiple_assignment)
        q_differ = int((fq != qwords.cpu().numpy()).any(axis=1).sum())

    index.scores(qx[:n_desc], qids[:n_desc], words=qwords[:n_desc])  # warm-up
    _sync(device)
    t0 = time.perf_counter()
    scores = index.scores(qx, qids, words=qwords)
    _sync(device)
    t_query = time.perf_counter() - t0
    t0 = time.perf_counter()
    for q in range(nq):
        sl = slice(q * n_desc, (q + 1) * n_desc)
        index.scores(qx[sl], qids[sl], words=qwords[sl])
    _sync(device)
    t_query_single = time.perf_counter() - t0

    # the whole query path, as a user runs it: raw descriptors in, top 100 out
    index.search(qx[:n_desc], qids[:n_desc], topk=100)  # warm-up
    _sync(device)
    t0 = time.perf_counter()
    lit_top = index.search(qx, qids, topk=100).ranks.cpu().numpy()
    _sync(device)
    t_search = time.perf_counter() - t0
    t0 = time.perf_counter()
    for q in range(nq):
        sl = slice(q * n_desc, (q + 1) * n_desc)
        index.search(qx[sl], qids[sl], topk=100)
    _sync(device)
    t_search_single = time.perf_counter() - t0

    ours = scores.cpu().numpy().astype(np.float64)
    top_ours = np.argsort(-ours, axis=1, kind="stable")[:, :10]
    res.update({
        "quantize_db_s": round(t_quant, 3) if search_db else None,
        "faiss_bruteforce_s": round(t_faiss, 3) if flat is not None else None,
        "quantize_vs_faiss": round(t_quant / t_faiss, 3) if flat is not None and t_faiss else None,
        "assignments_identical_to_faiss": same_as_faiss if flat is not None else None,
        "quantize_backend": index.quantizer.auto_backend(device, index.params.query_multiple_assignment),
        "quantize_queries_s": round(t_qquant, 3),
        "query_descriptors_whose_words_differ_from_faiss": q_differ,
        "build_incl_quantize_s" if search_db else "build_s": round(t_build, 3),
        "search_ms": round(1000 * t_search / nq, 3),
        "search_single_ms": round(1000 * t_search_single / nq, 3),
        "query_ms": round(1000 * t_query / nq, 3),
        "query_single_ms": round(1000 * t_query_single / nq, 3),
        "source_image_ranked_first": float(np.mean(top_ours[:, 0] == np.array(sources))),
        "stats": index.stats(),
    })
    if pkg is None:
        res["asmk_package"] = {"skipped": "asmk package not installed (pip install asmk, or the 'bench' extra)"
                               if _asmk_pkg is None else "--no-asmk"}
    else:
        qxn = qx.cpu().numpy()
        pkg.query(qxn[:n_desc], np.zeros(n_desc, np.int64))  # warm-up
        t0 = time.perf_counter()
        asmk_ranks = pkg.query(qxn, qids.cpu().numpy())
        t_asmk_query = time.perf_counter() - t0
        agree = float(np.mean([np.array_equal(a[:10], b[:10]) for a, b in zip(asmk_ranks, lit_top, strict=True)]))
        res["asmk_package"] = {
            "version": getattr(_asmk_pkg, "__version__", None),
            "build_incl_quantize_s" if search_db else "build_s": round(t_asmk_build, 3),
            "query_ms": round(1000 * t_asmk_query / nq, 3),
            "top10_agreement_lit_asmk": agree,
        }
        res["lit_vs_asmk"] = {
            "build": round(t_build / t_asmk_build, 3),
            "query_batch": round(t_search / t_asmk_query, 3),
            "query_one_at_a_time": round(t_search_single / t_asmk_query, 3),
        }
    if args.no_reference:
        res["reference"] = {"skipped": "--no-reference"}
    else:
        qxn, qwn = qx.cpu().numpy(), qwords.cpu().numpy()
        ref_scores = []
        t0 = time.perf_counter()
        for q in range(nq):
            sl = slice(q * n_desc, (q + 1) * n_desc)
            ref_scores.append(ref.query(qxn[sl], qwn[sl]))
        t_ref_query = time.perf_counter() - t0
        ref_scores = np.stack(ref_scores)
        top_ref = np.argsort(-ref_scores, axis=1, kind="stable")[:, :10]
        res["reference"] = {
            "build_s (words given)": round(t_ref_build, 3),
            "query_ms (words given)": round(1000 * t_ref_query / nq, 3),
            "query_speedup": round(t_ref_query / t_query, 1),
            "query_speedup_single": round(t_ref_query / t_query_single, 1),
            "max_abs_score_diff": float(np.abs(ours - ref_scores).max()),
            "scores_match": bool(np.allclose(ours, ref_scores, rtol=1e-4, atol=1e-5)),
            "top10_agreement": float((top_ours == top_ref).mean()),
        }
    return res


class _AsmkPackage:
    """The asmk package's own pipeline (codebook given, binary, FIRe parameters)."""

    def __init__(self, codebook: np.ndarray, n_desc: int):
        params = {
            "index": {"gpu_id": None},
            "train_codebook": {"codebook": {"size": codebook.shape[0]}},
            "build_ivf": {"kernel": {"binary": True}, "ivf": {"use_idf": False},
                          "quantize": {"multiple_assignment": 1}, "aggregate": {}},
            "query_ivf": {"quantize": {"multiple_assignment": 5}, "aggregate": {}, "search": {"topk": None},
                          "similarity": {"similarity_threshold": 0.0, "alpha": 3.0}},
        }
        cdb = _asmk_codebook.Codebook(_asmk_index.initialize_index(None), size=codebook.shape[0])
        cdb.index(np.ascontiguousarray(codebook, dtype=np.float32))
        self.method = _asmk_method.ASMKMethod(params, {}, codebook=cdb)
        self.builder = self.method.create_ivf_builder()

    def add(self, x: np.ndarray, ids: np.ndarray, words: np.ndarray | None) -> None:
        if words is None:
            self.builder.add(x, ids)
        else:  # simulated assignment: aggregate and add with the given words
            agg = self.builder.kernel.aggregate(x, words, ids)
            self.builder.ivf.add(*agg)

    def finish(self) -> None:
        self.method = self.method.add_ivf_builder(self.builder)

    def query(self, qx: np.ndarray, qids: np.ndarray) -> np.ndarray:
        _, _, ranks, _ = self.method.query_ivf(qx, qids)
        return ranks


def run_simulated(cfg, args, device):
    """1M-image database drawn directly as aggregated entries (no descriptors, no reference)."""
    gen = torch.Generator().manual_seed(args.seed)
    k, n_img, per = cfg["words"], cfg["images"], cfg["vectors_per_image"]
    nq, n_desc = args.queries, 1000
    codebook = torch.randn(k, DIM, generator=gen)
    weights = _popularity(k, gen).to(device)
    dgen = torch.Generator(device=device).manual_seed(args.seed)
    index = ASMK(codebook, device=device)
    batch = max(1, min(n_img, 50_000_000 // per))
    _sync(device)
    t0 = time.perf_counter()
    for start in range(0, n_img, batch):
        stop = min(start + batch, n_img)
        words = torch.multinomial(weights, (stop - start) * per, replacement=True, generator=dgen)
        images = torch.arange(start, stop, device=device).repeat_interleave(per)
        keys = torch.unique(images * k + words)  # one entry per (image, word)
        vectors = torch.randint(0, 256, (keys.shape[0], 16), dtype=torch.uint8, device=device, generator=dgen)
        index.ivf.add_entries(keys % k, keys // k, vectors)
    index.flush()
    _sync(device)
    t_build = time.perf_counter() - t0
    qx = _descriptors(codebook, torch.multinomial(weights.cpu(), nq * n_desc, replacement=True, generator=gen),
                      gen).to(device)
    qids = torch.arange(nq, device=device).repeat_interleave(n_desc)
    _sync(device)
    t0 = time.perf_counter()
    qwords = index.quantize(qx, m=index.params.query_multiple_assignment)
    _sync(device)
    t_qquant = time.perf_counter() - t0
    index.scores(qx[:n_desc], qids[:n_desc], words=qwords[:n_desc])  # warm-up
    _sync(device)
    t0 = time.perf_counter()
    index.search(qx, qids, topk=100, words=qwords)
    _sync(device)
    t_search = time.perf_counter() - t0
    t0 = time.perf_counter()
    for q in range(nq):
        sl = slice(q * n_desc, (q + 1) * n_desc)
        index.scores(qx[sl], qids[sl], words=qwords[sl])
    _sync(device)
    t_single = time.perf_counter() - t0
    res = {"images": n_img, "vectors_per_image": per, "words": k, "queries": nq,
           "note": "simulated database: random aggregated entries, no reference run",
           "build_from_entries_s": round(t_build, 3), "quantize_queries_s": round(t_qquant, 3),
           "search_top100_ms": round(1000 * t_search / nq, 3),
           "query_single_ms": round(1000 * t_single / nq, 3), "stats": index.stats()}
    if device.type == "cuda":
        res["gpu_peak_memory_gb"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    return res


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default="a,b,c", help="comma-separated subset of a,b,c")
    parser.add_argument("--quick", action="store_true", help="small sizes (seconds)")
    parser.add_argument("--images", type=int, help="database images (overrides the case size)")
    parser.add_argument("--descriptors", type=int, help="descriptors per image (cases a, b)")
    parser.add_argument("--words", type=int, help="codebook size K")
    parser.add_argument("--queries", type=int, help="query images (default 70, 10 with --quick)")
    parser.add_argument("--add-batch", type=int, default=1000, help="images per add() call")
    parser.add_argument("--assignment", choices=("auto", "search", "simulated"), default="auto",
                        help="database word assignment of cases a, b (see the module docstring)")
    parser.add_argument("--device", default=None, help="device of cases a, b (default: cpu)")
    parser.add_argument("--sim-device", default=None,
                        help="device of case c (default: cuda; c is skipped without it)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--no-asmk", action="store_true", help="do not run the asmk package")
    parser.add_argument("--no-reference", action="store_true", help="do not run the loop reference")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.queries = args.queries or (10 if args.quick else 70)
    sizes = QUICK if args.quick else FULL
    out = {"torch": torch.__version__, "cpu_threads": torch.get_num_threads(),
           "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
           "machine": platform.processor() or platform.machine(),
           "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
           "cases": {}}
    for case in [c.strip() for c in args.cases.split(",") if c.strip()]:
        if case not in sizes:
            parser.error(f"unknown case {case!r}")
        cfg = dict(sizes[case])
        for key in ("images", "descriptors", "words"):
            if getattr(args, key) is not None and key in cfg:
                cfg[key] = getattr(args, key)
        if case == "c":
            sim = args.sim_device or ("cuda" if torch.cuda.is_available() else None)
            if sim is None:
                out["cases"][case] = {"skipped": "no CUDA device available (use --sim-device cpu to force)"}
                continue
            out["cases"][case] = run_simulated(cfg, args, torch.device(sim))
        else:
            out["cases"][case] = run_case(case, cfg, args, torch.device(args.device or "cpu"))
        out["cases"][case]["device"] = str(args.sim_device or "cuda") if case == "c" else (args.device or "cpu")
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
