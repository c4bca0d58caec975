"""``lit features info|merge``: what a feature file holds; several files into one."""

from __future__ import annotations

import json

NAME = "features"
HELP = "inspect feature files (info) or merge several into one (merge)"


def add_arguments(p) -> None:
    p.add_argument("action", choices=("info", "merge"), help="info: what a file holds; merge: several files into --out")
    p.add_argument("files", nargs="+", help="feature files (from `lit extract`)")
    p.add_argument("--out", help="merge: the new feature file")
    p.add_argument("--overwrite", action="store_true", help="merge: replace --out if it exists")
    p.add_argument("--json", action="store_true", help="info: print JSON (names of failed files included)")
    p.add_argument("--show-failed", type=int, default=20, help="info: failed files listed (default 20)")


def _shown(value):
    from .._names import display_name

    if isinstance(value, str):
        return display_name(value)
    if isinstance(value, dict):
        return {_shown(k): _shown(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_shown(v) for v in value]
    return value


def _print_info(info: dict, show_failed: int) -> None:
    from .._names import display_name

    st = info["settings"]
    print(display_name(info["path"]))
    print(f"  {info['images']} images, {info['features']} features "
          f"({info['features_per_image']['min']}-{info['features_per_image']['max']} per image), "
          f"{info['descriptor_dim']}-d {info['dtype']}, {info['size_bytes'] / 1e6:.1f} MB")
    print(f"  names relative to: {display_name(info['root']) if info['root'] else '(not recorded)'}")
    if st:
        print(f"  extraction: scales {','.join(f'{x:g}' for x in st['scales'])}, "
              f"at most {st['features_num']} features per image (features_num), image size {st['image_size']}")
    print(f"  model: {info.get('model') or '(not recorded)'}, fingerprint {info['fingerprint'][:16]}")
    text = info.get("text_embeddings") or {}
    print("  text search embeddings: " + (", ".join(f"{t} ({n} of {info['images']} images)" for t, n in text.items())
                                         or "none (`lit text embed` adds them)"))
    print(f"  failed: {len(info['failed'])}")
    for err in list(info["failed"].values())[:show_failed]:
        print(f"    {display_name(err)}")
    if len(info["failed"]) > show_failed:
        print(f"    ... (+{len(info['failed']) - show_failed} more; --json lists all)")


def run(args) -> int:
    from .._image import display_name
    from ..errors import UsageError
    from ..features import feature_file_info
    from ..pipeline import merge_feature_files

    if args.action == "info":
        infos = [feature_file_info(p) for p in args.files]
        if args.json:  # valid UTF-8: names and messages as display_name shows them (no lone surrogates)
            print(json.dumps(_shown(infos if len(infos) > 1 else infos[0]), indent=1))
            return 0
        for info in infos:
            _print_info(info, args.show_failed)
        return 0
    if not args.out:
        raise UsageError("merge needs --out FILE")
    summary = merge_feature_files(args.files, args.out, overwrite=args.overwrite)
    print(f"merged {len(args.files)} files into {display_name(args.out)}: {summary.images} images, "
          f"{len(summary.duplicates)} duplicates stored once, {summary.failed} failures kept"
          + (f", names relative to {summary.root}" if summary.root else "")
          + "".join(f", {t} text embeddings of {n} images kept" for t, n in summary.embeddings.items()))
    return 0
