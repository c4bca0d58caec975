"""Does the calibrated text score tell a query with a correct photo from gibberish and from a
thing the collection does not hold? Prints JSON.

    python benchmarks/text_calibration.py [--json out.json]

Photos: the real photos of ``benchmarks/text_search.py`` part (b) (multi-view scenes,
landmark pairs, scikit-image's photos). Queries: ``benchmarks/text_calibration_queries.py``
(written before any run): PRESENT (a correct photo is in the collection), ABSENT and
GIBBERISH. A query's confidence is its best score over the photos; the ROC AUC says how well
a threshold on it separates PRESENT from the others, for the raw score (dot product) and the
calibrated one (:mod:`lit.text.calibration`). Development / test split: queries of the
scikit-image photos with half the negatives (even positions) choose the threshold; the
landmark queries with the other half test it.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import text_search
import torch
from text_calibration_queries import ABSENT, GIBBERISH, PRESENT
from text_search import average_precision, real_photos

from lit.bench import print_report
from lit.text.calibration import CONFIDENT_Z, calibrate, reference_scores
from lit.text.factory import load_text_model


def roc_auc(pos, neg) -> float:
    """P(a positive scores above a negative), ties counted half."""
    pos, neg = np.asarray(pos, float)[:, None], np.asarray(neg, float)[None, :]
    return float(((pos > neg).sum() + 0.5 * (pos == neg).sum()) / (pos.size * neg.size))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=None, help="folder holding multiview/ and landmark-pairs/ (default: text_search's, "
                   "../shared/data beside the repository)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if args.data:
        text_search.MULTIVIEW = os.path.join(args.data, "multiview")
        text_search.LANDMARK_PAIRS = os.path.join(args.data, "landmark-pairs")
    names, images = real_photos()
    model = load_text_model("lit-text-effl0")
    image = model.image_space(model.image_tower.embed(images))
    texts = list(PRESENT) + ABSENT + GIBBERISH
    kind = ["present"] * len(PRESENT) + ["absent"] * len(ABSENT) + ["gibberish"] * len(GIBBERISH)
    raw = model.embed_texts(texts).embeddings @ image.T
    cal = calibrate(raw, reference_scores(model, image))
    out = {"photos": len(names), "queries": {k: kind.count(k) for k in ("present", "absent", "gibberish")},
           "confident_z": CONFIDENT_Z}
    for label, s in (("raw", raw), ("calibrated", cal)):
        best = s.max(1).values.numpy()
        pos = best[[k == "present" for k in kind]]
        res = {"auc_vs_all": roc_auc(pos, best[[k != "present" for k in kind]]),
               "auc_vs_absent": roc_auc(pos, best[[k == "absent" for k in kind]]),
               "auc_vs_gibberish": roc_auc(pos, best[[k == "gibberish" for k in kind]])}
        rel = [np.array([any(n.startswith(q) for q in PRESENT[t]) for n in names]) for t in PRESENT]
        res["map_present"] = float(np.mean([average_precision(s[i].numpy(), rel[i]) for i in range(len(PRESENT))]))
        res["best"] = {t: round(float(b), 3) for t, b in zip(texts, best, strict=True)}
        out[label] = res
    best = cal.max(1).values.numpy()
    sk = np.array([k == "present" and PRESENT[t][0].startswith("skimage/") for t, k in zip(texts, kind, strict=True)])
    landmark = np.array([k == "present" and not PRESENT[t][0].startswith("skimage/") for t, k in zip(texts, kind, strict=True)])
    neg = np.flatnonzero([k != "present" for k in kind])
    dev_neg, test_neg = neg[::2], neg[1::2]
    candidates = np.unique(best)
    acc = [((best[sk] >= c).sum() + (best[dev_neg] < c).sum()) / (sk.sum() + len(dev_neg)) for c in candidates]
    chosen = float(candidates[int(np.argmax(acc))])
    out["split"] = {
        "dev_threshold_best_accuracy": chosen, "dev_accuracy": float(max(acc)),
        "test_auc": roc_auc(best[landmark], best[test_neg]),
        "test_accuracy_at_confident_z": float(((best[landmark] >= CONFIDENT_Z).sum() + (best[test_neg] < CONFIDENT_Z).sum())
                                              / (landmark.sum() + len(test_neg))),
        "test_present_confident": int((best[landmark] >= CONFIDENT_Z).sum()), "test_present": int(landmark.sum()),
        "test_negatives_confident": int((best[test_neg] >= CONFIDENT_Z).sum()), "test_negatives": len(test_neg),
    }
    print_report(out, args.json, indent=1)
    return 0


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    sys.exit(main())
