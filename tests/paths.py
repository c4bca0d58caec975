"""Folders the tests read: the repository, the bundled photos and the revisited ground truth."""

import os
from pathlib import Path

import lit

REPO = Path(__file__).resolve().parents[1]
PHOTOS = os.path.join(os.path.dirname(lit.__file__), "assets", "photos")  # bundled, with attribution
GND_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "revisited-gnd")
