"""``python -m lit.train`` (also under ``torchrun ... -m lit.train``)."""

import sys

from . import main

sys.exit(main())
