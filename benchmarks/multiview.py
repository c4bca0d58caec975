"""Folder-per-scene retrieval benchmark (mAP, Recall@1): see ``lit/bench/multiview.py``.

    python benchmarks/multiview.py --root ../shared/data/multiview --json multiview.json
"""

import sys

from lit.bench.multiview import main

if __name__ == "__main__":
    sys.exit(main())
