"""``python -m lit.train`` (also under ``torchrun ... -m lit.train``): the same as ``lit train``.

An entry point, not part of the library: it hands over to the command line."""

import sys

from lit.cli import main

sys.exit(main(["train", *sys.argv[1:]]))
