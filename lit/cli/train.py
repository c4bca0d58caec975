"""``lit train``: train a super-feature model from an experiment file."""

from __future__ import annotations

NAME = "train"
HELP = "train a super-feature model: the FIRe recipe on SfM-120k, or fine-tuning on your own photos"


def add_arguments(p) -> None:
    p.add_argument("--config", required=True, help="experiment file (.yaml, .yml or .toml)")
    p.add_argument("--out", default=None, help="results folder (default: runs/<config name>); "
                                               "a non-empty one needs --resume or --overwrite")
    p.add_argument("--resume", action="store_true",
                   help="continue from the latest checkpoint in --out (says so and starts fresh when there is none)")
    p.add_argument("--overwrite", action="store_true", help="delete the results already in --out and start fresh")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set optim.lr=1e-4 (repeatable; values are YAML)")


def run(args) -> int:
    import sys

    from ..train import train_from_config

    for stream in (sys.stdout, sys.stderr):  # progress visible at once in a log file
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(line_buffering=True)
    train_from_config(args.config, args.out, overrides=args.overrides, resume=args.resume, overwrite=args.overwrite,
                      device=args.device)
    return 0
