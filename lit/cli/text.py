"""``lit text embed|encode``: global image embeddings for older files; query embeddings."""

from __future__ import annotations

import json
import sys

NAME = "text"
HELP = "text search tools: add image embeddings to an older feature file / index"


def add_arguments(p) -> None:
    sub = p.add_subparsers(dest="text_command", metavar="TEXT_COMMAND")
    e = sub.add_parser("embed", help="add the global image embeddings text search needs to a feature file (and an index)")
    e.add_argument("features", help="feature file from `lit extract`")
    e.add_argument("--root", help="folder the file's image names are relative to (the extract input folder)")
    e.add_argument("--index", help="also store them in this index (from `lit index` on the same feature file)")
    e.add_argument("--text-model", default=None, help="text model whose image tower to run (default lit-text-effl0)")
    e.add_argument("--device", default="cpu", help="cpu or cuda")
    e.add_argument("--quiet", action="store_true")
    q = sub.add_parser("encode", help="print the joint-space embedding of text queries as JSON")
    q.add_argument("texts", nargs="+")
    q.add_argument("--text-model", default=None)


def run(args) -> int:
    from ..text.factory import load_text_model
    from ..text.store import add_embeddings, write_index_embeddings

    if args.text_command == "embed":
        model = load_text_model(args.text_model, args.device)
        n = add_embeddings(args.features, args.root, model, device=args.device, progress=not args.quiet)
        print(f"embedded {n} images of {args.features} ({model.tower_name})")
        if args.index:
            print(write_index_embeddings(args.features, args.index))
        return 0
    if args.text_command == "encode":
        q = load_text_model(args.text_model).embed_texts(args.texts)
        for note in q.notes:
            print(f"note: {note}", file=sys.stderr)
        json.dump([{"query": t, "embedding": e.tolist()} for t, e in zip(q.texts, q.embeddings, strict=True)], sys.stdout)
        print()
        return 0
    print("usage: lit text {embed,encode} ...", file=sys.stderr)
    return 2
