"""Revisited Oxford/Paris benchmark: ``lit evaluate`` (the options of ``lit evaluate --help``).

    python benchmarks/revisited.py --dataset roxford5k --data-root data/ --model fire \
        --sfm-root data/ --device cuda --json roxford.json
"""

import sys

from lit.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
