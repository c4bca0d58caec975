"""Revisited Oxford/Paris benchmark: see ``lit/bench/revisited.py`` (also ``lit evaluate``).

    python benchmarks/revisited.py --dataset roxford5k --data-root data/ --model fire \
        --sfm-root data/ --device cuda --json roxford.json
"""

import sys

from lit.bench.revisited import main

if __name__ == "__main__":
    sys.exit(main())
