"""`lit` itself (lit.cli): help, and user errors as one line with exit status 2."""

import subprocess
import sys

import torch
from paths import PHOTOS

import lit


def test_help_explains_every_command(cli):
    proc = subprocess.run([sys.executable, "-m", "lit", "--help"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout  # `python -m lit` itself
    for cmd in ("extract", "index", "search", "match", "plot-attention", "evaluate", "download", "demo", "models"):
        assert cmd in out
    assert "--batch-size" in cli("extract", "--help").stdout
    assert "--pairs" in cli("search", "--help").stdout


def test_user_errors_are_one_line_without_traceback(tmp_path, ckpt, cli):
    cases = [
        ("match", tmp_path / "missing.jpg", tmp_path / "missing2.jpg", "--model", ckpt, "--device", "cpu"),
        ("extract", tmp_path / "nowhere", "--out", tmp_path / "x.h5", "--model", ckpt),
        ("index", tmp_path / "missing.h5", "--out", tmp_path / "i.h5"),
        ("match", "a.jpg", "b.jpg", "--model", tmp_path / "missing.pt"),
        # one past the last GPU: "no CUDA" here, "this machine has N CUDA devices" on a GPU machine
        ("extract", PHOTOS, "--out", tmp_path / "x.h5", "--model", ckpt, "--device", f"cuda:{torch.cuda.device_count()}"),
    ]
    for args in cases:
        proc = cli(*args, ok=False)
        assert proc.returncode == 2, (args, proc.stderr)
        assert "Traceback" not in proc.stderr and proc.stderr.startswith("lit ")
        assert len(proc.stderr.strip().splitlines()) <= 3


def test_help_states_the_policies(cli):
    assert "12 x sqrt" in cli("index", "--help").stdout
    text = cli("search", "--help").stdout
    assert "score" in text and "multiple assignment" in text and "--exclude-self" in text
    text = cli("match", "--help").stdout
    assert "calibrated" in text and "background test" in text and "--margin" in text


def test_help_version_and_models(cli):
    top = cli("--help", ok=False)
    assert top.returncode == 0 and "``" not in top.stdout and "returns it" not in top.stdout
    assert "train a super-feature model" in top.stdout and "features" in top.stdout
    assert cli("--version", ok=False).stdout.strip() == f"lit {lit.__version__}"
    models = cli("models", ok=False).stdout.splitlines()
    default = [line for line in models if line.startswith("*")]
    assert len(default) == 2 and default[0].split()[1] == lit.DEFAULT_MODEL and "installed (" in default[0]
    assert any(line.split()[:1] == ["fire"] and "lit download fire" in line for line in models)
