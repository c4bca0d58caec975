"""The train-global / evaluate-global commands and the SOP and kNN benchmarks on tiny data."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch
from metric.shapes import TINY, make_sop_dataset

from lit.metric import GlobalModel

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def load_benchmark(name: str):
    spec = importlib.util.spec_from_file_location(f"{name}_benchmark", os.path.join(ROOT, "benchmarks", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_train_and_evaluate_commands_on_tiny_folders(shapes, tmp_path, one_thread, capsys):
    from lit.cli import main

    out = tmp_path / "run" / "model.pt"
    status = main([
        "train-global", "--root", shapes[0], "--out", str(out), "--backbone", TINY, "--out-index", "-2",
        "--dim", "16", "--image-size", "32", "-P", "4", "-K", "2", "--epochs", "2",
        "--batches-per-epoch", "3", "--device", "cpu", "--eval", "--eval-root", shapes[1], "--quiet",
    ])
    assert status == 0 and out.is_file()
    import yaml

    report = yaml.safe_load((tmp_path / "run" / "model.yaml").read_text())
    assert report["train"]["classes_per_batch"] == 4 and len(report["history"]) == 2
    assert set(report["recall"]) == {"1", "10", "95"}  # 96 test images: k clipped to 95
    capsys.readouterr()
    js = tmp_path / "eval.json"
    status = main(["evaluate-global", "--root", shapes[1], "--checkpoint", str(out), "--ks", "1,5",
                   "--device", "cpu", "--json", str(js)])
    assert status == 0
    result = json.loads(js.read_text())
    assert set(result["recall"]) == {"1", "5"} and result["dataset"]["images"] == 96
    assert result["recall"]["1"] == pytest.approx(report["recall"]["1"])
    assert "R@1" in capsys.readouterr().out


def test_evaluate_command_without_checkpoint_uses_an_untrained_gem_baseline(shapes, tmp_path, one_thread):
    from lit.cli import main

    js = tmp_path / "base.json"
    status = main(["evaluate-global", "--root", shapes[1], "--backbone", TINY, "--no-pretrained",
                   "--image-size", "32", "--device", "cpu", "--json", str(js)])
    assert status == 0
    result = json.loads(js.read_text())
    assert result["checkpoint"] is None and result["model"]["dim"] is None and result["image_size"] == 32


def test_evaluate_command_reports_user_errors(tmp_path, capsys):
    from lit.cli import main

    status = main(["evaluate-global", "--root", str(tmp_path), "--checkpoint", str(tmp_path / "none.pt")])
    assert status == 2
    assert "evaluate-global: error" in capsys.readouterr().err


def test_sop_benchmark_on_a_tiny_generated_sop(tmp_path, one_thread, capsys):
    root = make_sop_dataset(tmp_path / "sop", classes=(4, 5), per_class=3)
    torch.manual_seed(0)
    ckpt = tmp_path / "m.pt"
    GlobalModel(TINY, dim=8, image_size=32).save(ckpt)
    sop = load_benchmark("sop")
    js = tmp_path / "sop.json"
    assert sop.main(["--root", root, "--checkpoint", str(ckpt), "--json", str(js), "--device", "cpu"]) == 0
    result = json.loads(js.read_text())
    assert result["dataset"]["images"] == 15 and result["dataset"]["split"] == "test"
    assert set(result["recall"]) == {"1", "10", "14"}
    assert result["references"]["margin (Wu et al. 2017)"]["1"] == 72.7
    table = capsys.readouterr().out
    assert "triplet semi-hard" in table and "66.7" in table and "R@1000" in table


def test_knn_speed_benchmark_on_small_data(tmp_path, capsys):
    knn_speed = load_benchmark("knn_speed")
    js = tmp_path / "knn.json"
    assert knn_speed.main(["--n", "600", "--dim", "16", "--k", "50", "--chunk-size", "128", "--devices", "cpu",
                           "--json", str(js)]) == 0
    report = json.loads(js.read_text())
    runs = {r["backend"]: r for r in report["runs"]}
    assert runs["torch"]["identical_to_brute_force"] is True
    assert runs["pml-faiss"]["recall_equal_to_lit"] is True


def test_parsers_of_the_global_commands_load_no_torch():
    code = ("import sys\nfrom lit.cli import build_parser\n"
            "build_parser('train-global').parse_args(['train-global', '--root', 'r', '--out', 'o'])\n"
            "build_parser('evaluate-global').parse_args(['evaluate-global', '--root', 'r'])\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n")
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=ROOT)
