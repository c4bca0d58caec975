"""The package as pip installs it: the wheel holds the weights, the registry, the model
cards and the bundled photos (package data), and every package of lit/."""

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from lit._fileio import file_sha256

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """Build the wheel from a copy of the checkout (no network, no build isolation, nothing
    written into the checkout), with setuptools' PEP 517 backend."""
    src = tmp_path_factory.mktemp("src")
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(REPO / "lit", src / "lit", ignore=ignore)
    shutil.copytree(REPO / "weights", src / "weights", ignore=ignore)
    dist = src / "dist"
    code = f"from setuptools import build_meta; print(build_meta.build_wheel({str(dist)!r}))"
    proc = subprocess.run([sys.executable, "-c", code], cwd=src, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (path,) = dist.glob("lit-*.whl")
    with zipfile.ZipFile(path) as z:
        yield z


def test_wheel_contains_the_weights_registry_and_model_cards(wheel):
    names = set(wheel.namelist())
    registry = json.loads(wheel.read("lit/weights/registry.json"))
    packaged = [e for e in registry if e.get("packaged")]
    assert {e["name"] for e in packaged} == {"lit-effl0", "lit-text-effl0"}
    for entry in packaged:  # the very files the registry names, with its sha256
        member = f"lit/weights/{entry['filename']}"
        assert member in names
        assert file_sha256(REPO / "weights" / entry["filename"]) == entry["sha256"]
        assert wheel.getinfo(member).file_size == (REPO / "weights" / entry["filename"]).stat().st_size
    for card in ("README.md", "lit-text-effl0.md", "lit-effl0.metrics.jsonl", "__init__.py"):
        assert f"lit/weights/{card}" in names
    # the scripts that made the weights stay in the repository
    assert not [n for n in names if n.startswith("lit/weights/recipes/") or n.startswith("weights/")]


def test_wheel_contains_the_bundled_photos(wheel):
    names = set(wheel.namelist())
    photos = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "lit" / "assets" / "photos").rglob("*") if p.is_file())
    assert len(photos) >= 13 and all(p in names for p in photos)


def test_wheel_contains_every_package_of_lit(wheel):
    names = set(wheel.namelist())
    packages = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "lit").rglob("__init__.py"))
    missing = [p for p in packages if p not in names]
    assert not missing, f"add these packages to setup.cfg [options] packages: {missing}"
    modules = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "lit").rglob("*.py") if "__pycache__" not in p.parts)
    assert not [m for m in modules if m not in names]


def test_wheel_contains_the_search_page(wheel):
    names = set(wheel.namelist())
    static = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "lit" / "serve" / "static").rglob("*") if p.is_file())
    assert {"lit/serve/static/index.html", "lit/serve/static/app.js", "lit/serve/static/style.css"} <= set(static)
    assert all(p in names for p in static)
