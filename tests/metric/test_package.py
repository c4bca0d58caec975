"""The public names of lit.metric: each resolves on first use, and the option values load
without torch."""

from __future__ import annotations

import os
import subprocess
import sys

import lit.metric

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_every_public_name_resolves():
    assert sorted(lit.metric.__all__) == sorted(lit.metric._WHERE)
    for name in lit.metric.__all__:
        assert getattr(lit.metric, name) is not None
    assert callable(lit.metric.knn)  # the function, not a submodule of the same name


def test_option_values_load_without_torch():
    code = ("import sys\nfrom lit.metric.options import LOSSES, MINING\nimport lit.metric\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n")
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=ROOT)
