"""Train the shipped text head ``weights/lit-text-effl0.pt`` (CPU, a few minutes).

    PYTHONPATH=. python weights/make_lit_text_effl0.py [--cache concepts.pt]

Recipe (:data:`lit.text.training.RECIPE`): all-MiniLM-L6-v2 sentence embeddings of the
WordNet glosses of the 1000 ImageNet classes (timm ``ImageNetInfo``), each paired with its
class (positive) and 255 random other classes (negatives) per step, InfoNCE on a keyed head
whose class keys are the embeddings of the class names. Writes the head, its sha256 into
``weights/text_registry.json`` and the training log ``lit-text-effl0.metrics.jsonl``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from lit.text.minilm import load_minilm
from lit.text.model import save_head
from lit.text.training import RECIPE, concept_embeddings, train_concept_head

HERE = Path(__file__).resolve().parent


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", help="cache of the concept-text embeddings (reused when present)")
    ap.add_argument("--out", default=str(HERE / "lit-text-effl0.pt"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    concepts = concept_embeddings(load_minilm(), cache=args.cache)
    head, history = train_concept_head(concepts, range(1000), RECIPE)
    sha = save_head(args.out, head, tower="effl0", extra={"recipe": RECIPE.to_dict(), "classes": "all 1000"})
    with open(Path(args.out).with_suffix(".metrics.jsonl"), "w") as f:
        for rec in history:
            f.write(json.dumps(rec) + "\n")
    entry = {"name": "lit-text-effl0", "filename": Path(args.out).name, "sha256": sha,
             "description": "all-MiniLM-L6-v2 + keyed head trained by lit on ImageNet class glosses, "
                            "joint space: sqrt class posterior of ImageNet EfficientNet-Lite0"}
    (HERE / "text_registry.json").write_text(json.dumps([entry], indent=1) + "\n")
    print(json.dumps({"out": args.out, "sha256": sha, "first": history[0], "last": history[-1]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
