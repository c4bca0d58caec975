"""``lit evaluate``: the revisited Oxford/Paris benchmark (also ``benchmarks/revisited.py``)."""

from __future__ import annotations

import json
import sys

from ._common import DEFAULT_MODEL, device, parse_scales

NAME = "evaluate"
HELP = "retrieval quality: on your own folder-per-scene photos (--folder), or the revisited Oxford/Paris benchmark"
DESCRIPTION = """Measure retrieval quality.

--folder DIR: your own photos, one sub-folder per scene (DIR/scene/photo.jpg). Every photo is
a query; its positives are the other photos of its folder. Prints mAP, R@1 (top-1 correct),
mean precision at 1, 5, 10 (mP@k) and the mAP of each scene. The ASMK codebook is never
learned on the evaluated photos: --codebook-photos auto (default) takes the reference photos
lit has (its bundled photos and, beside the repository, its multi-view set), minus copies
of yours; or give a folder of other photos of similar places.

--dataset roxford5k|rparis6k --data-root DIR: revisited Oxford / Paris end to end:
images -> super-features -> ASMK -> the paper's table.

Every stage is cached under --cache-dir (default <data-root>/lit-cache), keyed by the model's
fingerprint: feature files resume where they stopped, the codebook and the distractor index
are computed once.

Codebook (in order of preference): --codebook FILE (.npy K x d, or an index file); with
--sfm-root, k-means on super-features of --codebook-images (FIRe: 20,000) random SfM-120k
training images at scale 1 (the FIRe protocol); otherwise k-means on the database's own
descriptors (a warning says it is not the paper's protocol).

With --distractors r1m the million distractors can be spread over processes:
torchrun --nproc_per_node N -m lit evaluate ... --distractors r1m (rank r extracts, indexes
and ranks the r-th block of R1M; rank 0 merges the lists and evaluates: the same rankings as
one process)."""


def add_arguments(p) -> None:
    p.add_argument("--folder", default=None, help="your own photos: one sub-folder per scene")
    p.add_argument("--codebook-photos", default="auto",
                   help="--folder: photos the codebook is learned on: auto (default), reference, evaluated, or a folder")
    p.add_argument("--seeds", type=int, default=1, help="--folder: k-means seeds averaged over (default 1)")
    p.add_argument("--dataset", default=None, help="roxford5k or rparis6k (revisitop layout under --data-root)")
    p.add_argument("--data-root", default=None, help="folder holding <dataset>/gnd_<dataset>.pkl and <dataset>/jpg/")
    p.add_argument("--model", default=None,
                   help=f"registered name or checkpoint path (default: {DEFAULT_MODEL}; the paper's model: fire)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    p.add_argument("--distractors", choices=["r1m"], default=None, help="add the R1M distractors (revisitop1m under --data-root)")
    p.add_argument("--codebook", default=None, help="codebook file (.npy K x d, or an index file)")
    p.add_argument("--sfm-root", default=None, help="folder with retrieval-SfM-120k/ (for the codebook, FIRe protocol)")
    p.add_argument("--codebook-size", type=int, default=None,
                   help="k-means words (default: 65536 for --dataset, `lit index`'s policy for --folder)")
    p.add_argument("--codebook-images", type=int, default=20000, help="SfM-120k training images for the codebook (default 20000)")
    p.add_argument("--kmeans-iterations", type=int, default=20)
    p.add_argument("--scales", default=None, help="comma-separated scales (default: the model's)")
    p.add_argument("--features-num", type=int, default=None, help="super-features per image (default: the model's)")
    p.add_argument("--image-size", type=int, default=None, help="longer image side (default: the model's, 1024)")
    p.add_argument("--amp", action="store_true", help="bf16 autocast for extraction (fast path)")
    p.add_argument("--workers", type=int, default=4, help="image decoding processes")
    p.add_argument("--cache-dir", default=None, help="where features, codebook and indexes are cached")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rerank", type=int, default=0, metavar="N",
                   help="re-rank the top N of each query by geometrically verified super-feature matches (lit search --rerank)")
    p.add_argument("--expand", type=int, default=0, metavar="K", help="query expansion with the top K verified images")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--json", default=None, help="write results and timings here")
    p.add_argument("--save-ranks", default=None, help="write the rankings (.npy, queries x database, revisitop ids) here")


def run(args) -> int:
    from .._fileio import atomic_write
    from ..errors import UsageError

    if args.folder:
        if args.dataset or args.data_root:
            raise UsageError("give --folder, or --dataset with --data-root, not both")
        return _run_folder(args)
    if not (args.dataset and args.data_root):
        raise UsageError("give --folder DIR (your photos, one sub-folder per scene), or --dataset roxford5k|rparis6k "
                         "with --data-root DIR (`lit download roxford5k --root DIR` fetches it)")
    from ..bench.revisited import RevisitedConfig, run_revisited

    cfg = RevisitedConfig(
        dataset=args.dataset, data_root=args.data_root, model=args.model or DEFAULT_MODEL, device=args.device,
        distractors=args.distractors, codebook=args.codebook, sfm_root=args.sfm_root,
        codebook_size=args.codebook_size or 65536, codebook_images=args.codebook_images,
        kmeans_iterations=args.kmeans_iterations, scales=parse_scales(args.scales), features_num=args.features_num,
        image_size=args.image_size, amp=args.amp, workers=args.workers, cache_dir=args.cache_dir, seed=args.seed,
        progress=not args.quiet, save_ranks=args.save_ranks, rerank=args.rerank, expand=args.expand,
    )
    out = run_revisited(cfg)
    if out is None:  # another rank of a torchrun job: rank 0 reports
        return 0
    print(out.pop("table"))
    if args.json:
        with atomic_write(args.json) as f:
            json.dump(out, f, indent=1)
    print(json.dumps({"dataset": out["dataset"], "timings": out["timings"]}), file=sys.stderr)
    return 0


def _run_folder(args) -> int:
    from .._fileio import atomic_write
    from ..bench.multiview import evaluate_folder
    from ..errors import UsageError

    if args.seeds < 1:
        raise UsageError(f"--seeds must be >= 1, got {args.seeds}")
    out = evaluate_folder(args.folder, args.model or DEFAULT_MODEL, device=device(args), codebook=args.codebook_photos,
                          codebook_size=args.codebook_size, seeds=args.seeds)
    print(out.pop("table"))
    if args.json:
        with atomic_write(args.json) as f:
            json.dump(out, f, indent=1)
        print(f"wrote {args.json}", file=sys.stderr)
    return 0
