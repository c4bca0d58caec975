"""Peak memory of decoding one very large image with ``lit.load_image``; prints JSON.

    python benchmarks/decode_memory.py                      # 13000 x 13000: 16-bit grey, RGBA, RGB PNGs
    python benchmarks/decode_memory.py --side 6000 --source /other/checkout   # another lit

Each image is written once (a smooth gradient: a few hundred KB on disk), then loaded at
the default image size (1024) in a fresh interpreter (Linux): ``peak_mb`` is the growth of
the process's peak resident memory (``VmHWM``, reset just before the load) over its size
then, and
``decoded_mb`` what the decoded file itself takes in PIL (width x height x bytes per
pixel: 2 for 16-bit grey, 4 for RGB and RGBA).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np
from PIL import Image

from lit.bench import load_image_peak

BYTES_PER_PIXEL = {"I;16": 2, "RGBA": 4, "RGB": 4, "L": 1}


def make(path: str, mode: str, side: int) -> None:
    ramp = (np.arange(side, dtype=np.uint32) * 65535 // max(1, side - 1)).astype(np.uint16)
    if mode == "I;16":
        img = Image.fromarray(np.broadcast_to(ramp, (side, side)).copy())
    else:
        row = (ramp >> 8).astype(np.uint8)
        band = Image.fromarray(np.broadcast_to(row, (side, side)).copy())
        img = Image.merge(mode, [band] * len(mode))
    img.save(path, compress_level=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--side", type=int, default=13000)
    ap.add_argument("--modes", default="I;16,RGBA,RGB")
    ap.add_argument("--source", default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                    help="the lit checkout to measure (default: this one)")
    args = ap.parse_args()
    report = {"side": args.side, "source": args.source, "images": []}
    with tempfile.TemporaryDirectory() as folder:
        for mode in args.modes.split(","):
            path = os.path.join(folder, f"big_{mode.replace(';', '')}.png")
            t = time.perf_counter()
            make(path, mode, args.side)
            made = time.perf_counter() - t
            row = {"mode": mode, "file_kb": os.path.getsize(path) // 1024, "write_s": round(made, 1),
                   "decoded_mb": round(args.side * args.side * BYTES_PER_PIXEL[mode] / 2**20)}
            try:
                peak_kb, seconds, shape = load_image_peak(path, 1024, source=args.source)  # the lit to measure
                row.update(peak_mb=round(peak_kb / 1024), load_s=round(seconds, 2), tensor=shape)
            except RuntimeError as err:
                row["error"] = str(err)
            report["images"].append(row)
            os.remove(path)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
