"""`lit train`: a non-empty output folder refused, failed configs leave nothing, warnings once, line-buffered output."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
from paths import REPO
from photo_folders import random_photos


def run_process(*args, env=None, timeout=300):
    """``python -m lit ARGS`` in a fresh interpreter (OMP_NUM_THREADS is read at start)."""
    return subprocess.run([sys.executable, "-m", "lit", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


TINY = textwrap.dedent("""\
    model:
      backbone: {name: resnet18, out_index: 3}
      lit: {T: 1, N: 8, dim: 32}
      reduction_dim: 16
      runtime: {image_size: 64}
    init: {whitening_images: 8}
    data: {source: folder, root: ROOT, image_size: 48, queries_per_epoch: 5, pool_size: 20, num_negatives: 1,
           val_images: 4, val_views: 1}
    optim: {epochs: 1, lr: 3.0e-4}
    validate_every: 1
""")


def test_train_refuses_a_non_empty_out_and_failed_configs_leave_no_folder(tmp_path, cli):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(TINY.replace("ROOT", str(tmp_path / "missing-photos")))
    out = tmp_path / "runs" / "a"
    proc = cli("train", "--config", cfg, "--out", out, "--device", "cpu", ok=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "missing-photos" in proc.stderr
    assert not (tmp_path / "runs").exists()  # nothing left by the failed run
    out.mkdir(parents=True)
    (out / "metrics.jsonl").write_text('{"epoch": 0}\n')
    proc = cli("train", "--config", cfg, "--out", out, "--device", "cpu", ok=False)
    assert proc.returncode == 2
    assert "already holds results (metrics.jsonl): pass --resume to continue that run, --overwrite" in proc.stderr
    assert (out / "metrics.jsonl").read_text() == '{"epoch": 0}\n'  # untouched
    from lit.train import prepare_out_dir

    assert prepare_out_dir(str(out), overwrite=True) is None and os.listdir(out) == []
    assert "no checkpoint in" in prepare_out_dir(str(tmp_path / "empty"), resume=True)
    (out / "config.yaml").write_text("x: 1\n")  # a run that never finished an epoch
    with pytest.raises(ValueError, match="no checkpoint in .*, but it holds files \\(config.yaml\\): pass --overwrite"):
        prepare_out_dir(str(out), resume=True)
    with pytest.raises(ValueError, match="exclude each other"):
        prepare_out_dir(str(out), resume=True, overwrite=True)


def test_train_warns_once_caps_workers_and_flushes_lines(tmp_path):
    cfg = tmp_path / "cfg.yaml"
    random_photos(tmp_path / "p", 12)
    cfg.write_text(TINY.replace("ROOT", str(tmp_path / "p")))
    out = tmp_path / "run"
    proc = run_process("train", "--config", cfg, "--out", out, "--device", "cpu", "--set", "data.num_workers=64",
               "--set", "data.queries_per_epoch=8", "--set", "data.pool_size=8", "--resume",
               env={"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    cpus = len(os.sched_getaffinity(0))
    err = proc.stderr.splitlines()
    assert err.count(f"lit train: warning: data.num_workers=64 is more than the {cpus} CPUs here: using {cpus}") == 1
    assert "each epoch trains 5 tuples" in proc.stderr  # 8 queries, 5 per step
    assert any("validation on 4 images" in line and "saturates at 100" in line for line in err)
    assert "UserWarning" not in proc.stderr and "worker processes" not in proc.stderr
    assert f"--resume: no checkpoint in {out}, starting a fresh run" in err  # notes go to stderr, as warnings
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in history] == [0, 1] and history[1]["tuples"] == 5
    with pytest.raises(ValueError, match="less than one optimiser step"):
        from lit.train import check_config, load_config

        check_config(load_config(cfg, overrides=["data.queries_per_epoch=3"]))


def test_stdout_is_line_buffered_when_redirected(tmp_path):
    script = ("import sys\nfrom lit.cli import main\n"
              "try:\n    main(['train', '--config', sys.argv[1], '--out', sys.argv[2], '--device', 'cpu'])\n"
              "except (ValueError, SystemExit):\n    pass\nprint(sys.stdout.line_buffering)\n")
    proc = subprocess.run([sys.executable, "-c", script, os.path.join(REPO, "configs", "own_photos.yaml"), str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=300)
    assert proc.stdout.strip().splitlines()[-1] == "True", proc.stderr
