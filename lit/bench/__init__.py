"""Benchmark programs shared by ``benchmarks/`` scripts and the ``lit`` command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys

__all__ = ["load_image_peak", "print_report"]

#: Run as ``python -c`` by :func:`load_image_peak`: it imports only ``lit._image``, so that it
#: measures any lit checkout put on the path.
_LOAD_PROBE = """
import sys, time
import lit._image as im
if sys.argv[3] != "-":
    im._REDUCE_PIXELS = int(sys.argv[3])
def kb(field):
    with open("/proc/self/status") as f:
        return int(next(line for line in f if line.startswith(field)).split()[1])
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # the peak resident size (VmHWM) starts again from the present one
before = kb("VmRSS")
t = time.perf_counter()
x = im.load_image(sys.argv[1], int(sys.argv[2]))
seconds = time.perf_counter() - t
print(kb("VmHWM") - before, seconds, *x.shape)
"""


def print_report(report: dict, path: str | os.PathLike | None = None, indent: int | None = None) -> None:
    """Print a benchmark's ``report`` as JSON on stdout (``indent`` as ``json.dumps``) and,
    when ``path`` is given, also write it there (indented, replaced atomically): the one way
    the ``benchmarks/`` scripts give their figures."""
    print(json.dumps(report, indent=indent))
    if path:
        from .._fileio import atomic_write

        with atomic_write(path) as f:
            json.dump(report, f, indent=1)


def load_image_peak(path: str | os.PathLike, image_size: int, *, reduce_pixels: int | None = None,
                    source: str | None = None, timeout: float | None = None) -> tuple[int, float, list[int]]:
    """What ``lit._image.load_image(path, image_size)`` costs in a fresh process: its peak
    resident memory above the process's size before it (kB, through ``/proc``: Linux), its
    seconds and the tensor's shape.

    Args:
        reduce_pixels: the pixel count above which images are reduced in strips (default:
            lit's own; smaller: the strip path at a size a test can afford).
        source: a lit checkout to measure instead of the installed one (``PYTHONPATH``).

    Raises:
        RuntimeError: the process failed (its last line of stderr).
    """
    env = {**os.environ, "PYTHONPATH": source} if source else None
    args = [str(path), str(int(image_size)), "-" if reduce_pixels is None else str(int(reduce_pixels))]
    p = subprocess.run([sys.executable, "-c", _LOAD_PROBE, *args], capture_output=True, text=True, env=env,
                       timeout=timeout)
    if p.returncode != 0:
        raise RuntimeError(p.stderr.strip().splitlines()[-1] if p.stderr.strip() else f"status {p.returncode}")
    peak_kb, seconds, *shape = p.stdout.split()
    return int(peak_kb), float(seconds), [int(v) for v in shape]
