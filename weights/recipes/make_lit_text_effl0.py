"""Train the shipped text head ``weights/lit-text-effl0.safetensors`` (CPU, about 6 minutes, most of it embedding texts).

    python weights/recipes/make_lit_text_effl0.py [--cache concepts.pt] [--synset-cache synsets21k.pt]

Needs WordNet 3.0's noun file (Debian ``wordnet-base``: ``/usr/share/wordnet/data.noun``).

Recipe (:data:`lit.text.training.RECIPE` with :data:`lit.text.training.HIERARCHY`):
all-MiniLM-L6-v2 sentence embeddings of

- the WordNet glosses of the 1000 ImageNet classes (timm ``ImageNetInfo``), each paired with
  its class;
- the lemmas of the other 20,842 ImageNet-21k synsets (up to 2 each), each paired with the 1k
  classes WordNet's hypernym graph puts below the synset, or below its parent (weight 0.5);
  synsets further away are left out;

against 255 random other classes per step (InfoNCE, soft targets), on a keyed head whose class
keys are the embeddings of the class names, with a learned map of the query and of the keys.
For queries of 6 WordPiece tokens or more, the head's class distribution is ``p_trained^0.6 p_free^0.4``
with the training-free (ConSE-style) map of the same keys (``free_weight`` 0.4, ``free_min_tokens`` 6
in the head's config, applied at inference); shorter queries get the trained map alone.
Writes the head, its sha256 into its entry of ``weights/registry.json`` and the training log
``lit-text-effl0.metrics.jsonl``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from lit.text.hierarchy import WORDNET_NOUNS, read_noun_hypernyms
from lit.text.minilm import load_minilm
from lit.text.model import save_head
from lit.text.training import (
    HIERARCHY,
    RECIPE,
    concept_embeddings,
    imagenet_wnids,
    synset_embeddings,
    train_recipe_head,
)

WEIGHTS = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", help="cache of the 1k concept-text embeddings (reused when present)")
    ap.add_argument("--synset-cache", help="cache of the 21k synset-text embeddings (reused when present)")
    ap.add_argument("--wordnet", default=WORDNET_NOUNS, help="WordNet 3.0 data.noun")
    ap.add_argument("--out", default=str(WEIGHTS / "lit-text-effl0.safetensors"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    encoder = load_minilm()
    concepts = concept_embeddings(encoder, cache=args.cache)
    synsets = synset_embeddings(encoder, imagenet_wnids(), cache=args.synset_cache)
    head, history = train_recipe_head(concepts, synsets, read_noun_hypernyms(args.wordnet), range(1000), RECIPE, HIERARCHY)
    sha = save_head(args.out, head, tower="effl0",
                    extra={"recipe": RECIPE.to_dict(), "hierarchy": {k: list(v) if isinstance(v, tuple) else v
                                                                      for k, v in vars(HIERARCHY).items()},
                           "classes": "all 1000", "synset_texts": len(synsets.wnids)})
    with open(Path(args.out).with_suffix(".metrics.jsonl"), "w") as f:
        for rec in history:
            f.write(json.dumps(rec) + "\n")
    registry = WEIGHTS / "registry.json"
    entries = json.loads(registry.read_text())
    for entry in entries:
        if entry["name"] == "lit-text-effl0":
            entry.update(filename=Path(args.out).name, sha256=sha)
    registry.write_text(json.dumps(entries, indent=1) + "\n")
    print(json.dumps({"out": args.out, "sha256": sha, "first": history[0], "last": history[-1]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
