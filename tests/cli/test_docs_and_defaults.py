"""The method's description lives in the repository, help texts point there, and the demo
writes its figures to a folder of its own."""

import inspect
import os
import re
import subprocess
import sys

from lit.cli import build_parser
from lit.demo import run_demo

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_search_help_cites_no_file_outside_the_repository():
    out = subprocess.run([sys.executable, "-m", "lit", "search", "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "SPEC" not in out.stdout and "docs/method.md" in out.stdout


def test_readme_links_only_files_of_the_repository():
    readme = open(os.path.join(REPO, "README.md"), encoding="utf-8").read()
    assert "SPEC" not in readme and "../shared/SPEC" not in readme
    for target in re.findall(r"\]\(([^)#]+)\)", readme):
        if not target.startswith("http"):
            assert os.path.exists(os.path.join(REPO, target)), target
    assert "## 3. Searching a collection" in open(os.path.join(REPO, "docs", "method.md"), encoding="utf-8").read()


def test_demo_does_not_write_into_the_tracked_figures():
    assert build_parser("demo").parse_args(["demo"]).out == "demo-figures"
    assert inspect.signature(run_demo).parameters["out_dir"].default == "demo-figures"
