"""The fault tour: damage lit's files and interrupt its writers, count what happens; prints JSON.

    python benchmarks/fault_tour.py                                   # synthetic features
    python benchmarks/fault_tour.py --photos DIR --model lit-effl0    # real photos through `lit extract`

Parts (each a key of the JSON):

- ``feature_corruptions`` / ``index_corruptions``: ``--cases`` copies of a feature file and
  of an index file, each with 1-3 flipped bytes or truncated at a random length (seed
  ``--seed``), searched like `lit search` does: ``refused`` (one-line LitError), ``same``
  (identical results), ``different`` (silently different results) and ``traceback`` (any
  other exception) — the last two must be 0;
- ``disk_full``: a writer whose file may not grow past a limit (RLIMIT_FSIZE: every write
  past it fails with EFBIG, as ENOSPC on a full disk), at ``--limits`` bytes, then a rerun
  with room: exit status, one line, zero rows, and whether the result equals a clean run;
  with ``--photos``, `lit extract` itself under the limit;
- ``tmpfs`` (root only): `lit extract`-like writes onto a 5 MB tmpfs, then resumed elsewhere;
- ``index_kills``: ``--kills`` rewrites of an index killed (SIGKILL) at random moments: the
  old index must still search identically;
- ``index_kill_points``: rewrites killed at injected points (before the ASMK data, before
  the names, instead of the rename): the old index must still search identically.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time

import numpy as np
import torch

from lit import pipeline
from lit.errors import LitError
from lit.features import FeatureStore
from lit.index_file import write_index
from lit.types import LocalFeatures

WRITER = textwrap.dedent("""
    import resource, signal, sys
    import torch
    limit = int(sys.argv[2])
    if limit:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
    from lit.errors import LitError
    from lit.features import FeatureStore
    from lit.types import LocalFeatures
    try:
        with FeatureStore(sys.argv[1], "a", descriptor_dim=128, fingerprint="fp") as st:
            for i in range(int(sys.argv[3])):
                if f"im{i:04d}.jpg" in st.names:
                    continue
                g = torch.Generator().manual_seed(i)
                st.append(f"im{i:04d}.jpg", LocalFeatures(torch.randn(256, 128, generator=g), torch.rand(256, generator=g),
                                                          torch.ones(256), torch.arange(256), torch.rand(256, 2, generator=g)))
    except LitError as err:
        print(f"{type(err).__name__}: {err}", file=sys.stderr)
        sys.exit(2)
""")


def synthetic_features(path: str, images: int = 40) -> str:
    rng = np.random.default_rng(0)
    centres = rng.normal(scale=3, size=(8, 16)).astype(np.float32)
    with FeatureStore(path, "a", descriptor_dim=16, fingerprint="fp") as st:
        for i in range(images):
            x = (rng.normal(size=(60, 16)) + centres[i % 8]).astype(np.float32)
            name = f"scene_{i % 8}/{i:03d}.jpg" if i != 5 else os.fsdecode(b"scene_5/caf\xe9.jpg")
            st.append(name, LocalFeatures(torch.from_numpy(x), torch.rand(60), torch.ones(60), torch.arange(60),
                                          torch.rand(60, 2)))
    return path


def results(features: str, index_path: str | None = None, seed: int = 0):
    if index_path is None:
        index, info = pipeline.build_index(features, seed=seed)
    else:
        index, info = pipeline.open_index(index_path)
    q = pipeline.queries_from_features(features, info)
    return [(r.query, [(h.name, round(h.score, 6)) for h in r.hits])
            for r in pipeline.search(index, info, q.features, q.names, topk=10)]


def corruption_tour(clean: str, run, cases: int, seed: int, folder: str) -> dict:
    rng = np.random.default_rng(seed)
    expected = run(clean)
    out = {"cases": cases, "flips": 0, "truncations": 0, "refused": 0, "same": 0, "different": 0, "traceback": 0,
           "examples": {}}
    data = open(clean, "rb").read()
    for case in range(cases):
        kind = "truncation" if case % 4 == 3 else "flip"
        out["flips" if kind == "flip" else "truncations"] += 1
        bad = bytearray(data[: int(rng.integers(0, len(data)))] if kind == "truncation" else data)
        if kind == "flip":
            for _ in range(int(rng.integers(1, 4))):
                bad[int(rng.integers(0, len(bad)))] ^= int(rng.integers(1, 256))
        path = os.path.join(folder, f"bad{case}" + os.path.basename(clean))
        open(path, "wb").write(bytes(bad))
        try:
            got = run(path)
        except LitError as err:
            out["refused"] += 1
            out["examples"].setdefault(str(err).split(": ", 1)[-1][:70], case)
        except Exception as err:  # noqa: BLE001 - counted
            out["traceback"] += 1
            out["examples"][f"TRACEBACK {type(err).__name__}: {err}"[:120]] = case
        else:
            out["same" if got == expected else "different"] += 1
        os.remove(path)
    out["examples"] = dict(list(out["examples"].items())[:12])
    return out


def contents(path: str):
    with FeatureStore(path) as st:
        desc, _ = st.all_descriptors()
        return list(st.names), desc


def disk_full(folder: str, limits: list[int], images: int) -> list[dict]:
    script = os.path.join(folder, "writer.py")
    open(script, "w").write(WRITER)
    clean = os.path.join(folder, "clean_w.h5")
    subprocess.run([sys.executable, script, clean, "0", str(images)], check=True)
    ref = contents(clean)
    rows = []
    for limit in limits:
        path = os.path.join(folder, f"full{limit}.h5")
        p = subprocess.run([sys.executable, script, path, str(limit), str(images)], capture_output=True, text=True)
        row = {"limit_bytes": limit, "rc": p.returncode, "stderr_lines": len(p.stderr.strip().splitlines()),
               "traceback": "Traceback" in p.stderr, "message": p.stderr.strip()[-160:]}
        try:
            names, desc = contents(path)
            row["kept"] = len(names)
            row["zero_rows"] = int((np.abs(desc).max(axis=1) == 0).sum()) if len(desc) else 0
        except LitError as err:
            row["kept"] = f"refused until resumed: {str(err)[-80:]}"
        r = subprocess.run([sys.executable, script, path, "0", str(images)], capture_output=True, text=True)
        names, desc = contents(path)
        row["resume_rc"] = r.returncode
        row["resume_identical"] = names == ref[0] and np.array_equal(desc, ref[1])
        rows.append(row)
    return rows


def tmpfs(folder: str, images: int) -> dict:
    if os.geteuid() != 0:
        return {"skipped": "needs root to mount a tmpfs"}
    mnt = os.path.join(folder, "tmpfs")
    os.makedirs(mnt)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=5m", "tmpfs", mnt], capture_output=True).returncode:
        return {"skipped": "mount refused"}
    script = os.path.join(folder, "writer.py")
    try:
        p = subprocess.run([sys.executable, script, os.path.join(mnt, "f.h5"), "0", str(images)], capture_output=True,
                           text=True)
        names, desc = contents(os.path.join(mnt, "f.h5"))
        shutil.copy(os.path.join(mnt, "f.h5"), os.path.join(folder, "moved.h5"))
    finally:
        subprocess.run(["umount", mnt], capture_output=True)
    r = subprocess.run([sys.executable, script, os.path.join(folder, "moved.h5"), "0", str(images)], capture_output=True)
    ref = contents(os.path.join(folder, "clean_w.h5"))
    got = contents(os.path.join(folder, "moved.h5"))
    return {"rc": p.returncode, "message": p.stderr.strip()[-160:], "traceback": "Traceback" in p.stderr,
            "kept": len(names), "zero_rows": int((np.abs(desc).max(axis=1) == 0).sum()), "resume_rc": r.returncode,
            "resume_identical": got[0] == ref[0] and np.array_equal(got[1], ref[1])}


def index_kills(features: str, folder: str, kills: int, seed: int) -> dict:
    out = os.path.join(folder, "kill.idx.h5")
    index, info = pipeline.build_index(features, seed=0)
    write_index(out, index, info)
    before = results(features, out)
    script = os.path.join(folder, "rewrite.py")
    open(script, "w").write(textwrap.dedent(f"""
        import sys
        from lit import pipeline
        from lit.index_file import write_index
        index, info = pipeline.build_index({features!r}, seed=1)
        print("ready", flush=True)
        sys.stdin.readline()
        while True:
            write_index({out!r}, index, info)
    """))
    after = results(features, None, seed=1)  # what the rewrite writes (another codebook seed)
    rng = np.random.default_rng(seed)
    ok = 0
    for _ in range(kills):
        p = subprocess.Popen([sys.executable, script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        p.stdout.readline()
        p.stdin.write("\n")
        p.stdin.flush()
        time.sleep(float(rng.uniform(0, 0.3)))
        p.send_signal(signal.SIGKILL)
        p.wait()
        try:
            got = results(features, out)  # either the old index or a whole new one (seed 1: other codebook)
            ok += got in (before, after)
        except LitError:
            pass
    return {"kills": kills, "index_still_searches": ok,
            "stray_temporaries_after_next_write": _stray_after_write(out, index, info)}


KILL_AT = textwrap.dedent("""
    import os, sys
    import lit._fileio as fio
    import lit.index_file
    from lit import pipeline
    point, features, out = sys.argv[1:4]
    real = lit.index_file.write_asmk
    def dying(group, index, attrs=None):
        if point == "asmk":
            os.kill(os.getpid(), 9)
        real(group, index, attrs=attrs)
        if point == "pipeline":
            os.kill(os.getpid(), 9)
    lit.index_file.write_asmk = dying
    if point == "rename":
        fio.os.replace = lambda *a: os.kill(os.getpid(), 9)
    index, info = pipeline.build_index(features, seed=1)
    lit.index_file.write_index(out, index, info)
""")


def index_kill_points(features: str, folder: str) -> dict:
    """An index rewrite killed at injected points: before the ASMK data, between it and the
    names (``/pipeline``), and instead of the final rename."""
    out = os.path.join(folder, "points.idx.h5")
    index, info = pipeline.build_index(features, seed=0)
    write_index(out, index, info)
    before = results(features, out)
    rows = {}
    for point in ("asmk", "pipeline", "rename"):
        p = subprocess.run([sys.executable, "-c", KILL_AT, point, features, out], capture_output=True, text=True)
        rows[point] = {"killed": p.returncode == -signal.SIGKILL, "old_index_searches_identically":
                       results(features, out) == before}
    return rows


def _stray_after_write(out, index, info) -> int:
    write_index(out, index, info)
    folder = os.path.dirname(out)
    return len([p for p in os.listdir(folder) if ".tmp-" in p])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", help="extract these photos with `lit extract` (else synthetic features)")
    ap.add_argument("--model", default=None)
    ap.add_argument("--cases", type=int, default=200)
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--limits", default="60000,400000,2000000,5000000")
    ap.add_argument("--images", type=int, default=60)
    ap.add_argument("--seed", type=int, default=25)
    args = ap.parse_args()
    report: dict = {}
    with tempfile.TemporaryDirectory() as folder:
        feats = os.path.join(folder, "clean.h5")
        if args.photos:
            cmd = [sys.executable, "-m", "lit", "extract", args.photos, "--out", feats, "--quiet", "--text-model", "none"]
            cmd += ["--model", args.model] if args.model else []
            subprocess.run(cmd, check=False)
        else:
            synthetic_features(feats)
        t = time.perf_counter()
        report["feature_corruptions"] = corruption_tour(feats, results, args.cases, args.seed, folder)
        index, info = pipeline.build_index(feats, seed=0)
        clean_index = write_index(os.path.join(folder, "clean.idx.h5"), index, info)
        report["index_corruptions"] = corruption_tour(clean_index, lambda p: results(feats, p), args.cases,
                                                      args.seed + 1, folder)
        report["disk_full"] = disk_full(folder, [int(v) for v in args.limits.split(",")], args.images)
        report["tmpfs"] = tmpfs(folder, args.images)
        report["index_kills"] = index_kills(feats, folder, args.kills, args.seed)
        report["index_kill_points"] = index_kill_points(feats, folder)
        report["seconds"] = round(time.perf_counter() - t, 1)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
