"""Issue 18, points 6, 8 (CLI side), 16-20: downloads offline, the own-photos config, the
public API's checks and reprs, the training command line, and the top-level CLI."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image

import lit
from lit.models import save_checkpoint
from lit.types import LocalFeatures, Matches, SuperFeatures

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UNREACHABLE = "http://127.0.0.1:9/weights.pt"  # the discard port: refused at once, no network


def run(*args, env=None, timeout=300, module="lit"):
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def photos(folder, n, size=(64, 48)):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(folder / f"p{i:02d}.png")
    return folder


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


# ---------------------------------------------------------------------- downloads (point 6)
def test_offline_model_download_is_one_line_and_leaves_no_folder(tmp_path):
    registry = tmp_path / "models.json"
    registry.write_text(json.dumps([{"name": "offline-model", "url": UNREACHABLE, "filename": "offline.pt"}]))
    cache = tmp_path / "cache" / "lit"
    proc = run("download", "offline-model", "--quiet", env={"LIT_REGISTRY": str(registry), "LIT_CACHE": str(cache)})
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith(f"lit download: error: cannot reach {UNREACHABLE} (")
    assert f"download it elsewhere and save it as {cache / 'offline.pt'} (or pass the file)" in lines[0]
    assert not (tmp_path / "cache").exists()  # no empty folders left behind


def test_offline_dataset_download_cleans_up_its_folders(tmp_path):
    script = textwrap.dedent(f"""
        import dataclasses, sys
        import lit.data.datasets as ds
        from lit.cli import main
        info = ds.DATASETS["roxford5k"]
        files = tuple(dataclasses.replace(f, url="{UNREACHABLE}") for f in info.files)
        ds.DATASETS = dict(ds.DATASETS, roxford5k=dataclasses.replace(info, files=files))
        sys.exit(main(["download", "roxford5k", "--root", sys.argv[1], "--quiet"]))
    """)
    existing = tmp_path / "data"
    existing.mkdir()
    (existing / "mine.txt").write_text("user data")
    proc = subprocess.run([sys.executable, "-c", script, str(existing)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1 and "cannot reach" in proc.stderr
    assert sorted(os.listdir(existing)) == ["mine.txt"]  # the empty dataset folder is gone, the rest kept


def test_own_photos_config_starts_from_an_installed_model(tmp_path):
    from lit.train import Trainer, check_config, load_config

    cfg = load_config(os.path.join(REPO, "configs", "own_photos.yaml"), overrides=[f"data.root={photos(tmp_path / 'p', 12)}"])
    assert cfg.init.checkpoint == lit.DEFAULT_MODEL and lit.DEFAULT_MODEL in lit.list_models()
    assert check_config(cfg) == []
    trainer = Trainer(cfg.replace(**{"data.val_images": 2, "data.num_workers": 0}), tmp_path / "run", device="cpu",
                      log=lambda _: None)  # builds from lit-effl0 without any download
    assert trainer.model.cfg.lit.N == 64 and trainer.model.has_reduction


# ---------------------------------------------------------------------- API (point 16)
def test_load_model_without_argument_is_the_default_model():
    model = lit.load_model()
    assert model.cfg.to_dict() == lit.load_model(lit.DEFAULT_MODEL).cfg.to_dict()
    from lit import DEFAULT_MODEL

    assert DEFAULT_MODEL == lit.DEFAULT_MODEL


def test_result_types_have_short_reprs_and_check_lengths():
    feats = LocalFeatures(torch.randn(300, 128), torch.rand(300), torch.tensor([1.0, 0.5, 2.0]).repeat(100),
                          torch.arange(300), torch.zeros(300, 2))
    assert repr(feats) == "LocalFeatures(300 features, dim 128, scales 0.5-2, cpu)"
    assert str(SuperFeatures(torch.zeros(64, 128), torch.zeros(64), torch.zeros(64, 24, 32), 0.707)) == \
        "SuperFeatures(64 super-features, dim 128, attention 24x32, scale 0.707, cpu)"
    m = Matches(torch.tensor([0, 1]), torch.tensor([3, 2]), torch.tensor([0.95, 0.91]), torch.ones(2), torch.ones(2))
    assert repr(m) == "Matches(2 matches, similarity 0.910-0.950, score 1.860)"
    assert len(repr(feats)) < 100
    with pytest.raises(ValueError, match=r"strengths must have shape \(3,\)"):
        LocalFeatures(torch.zeros(3, 4), torch.zeros(4), torch.zeros(3), torch.arange(3))
    with pytest.raises(ValueError, match=r"positions must have shape \(3, 2\)"):
        LocalFeatures(torch.zeros(3, 4), torch.zeros(3), torch.zeros(3), torch.arange(3), torch.zeros(2, 2))
    with pytest.raises(ValueError, match="descriptors must be a"):
        LocalFeatures(torch.zeros(3), torch.zeros(3), torch.zeros(3), torch.arange(3))
    with pytest.raises(ValueError, match="scales"):
        feats._replace(scales=torch.zeros(2))
    assert "not L2-normalised" in LocalFeatures.__doc__ and "not L2-normalised" in lit.models.SuperFeatureModel.extract.__doc__


def test_match_options_are_validated():
    a, b = torch.randn(5, 8), torch.randn(6, 8)
    for kwargs, text in (({"ratio": 0.0}, "ratio must be > 0"), ({"threshold": 1.2}, "would match nothing")):
        with pytest.raises(ValueError, match=text):
            lit.match(a, b, **kwargs)
    with pytest.warns(UserWarning, match="ratio 1.5 > 1 tests nothing"):
        lit.match(a, b, ratio=1.5)
    with pytest.warns(UserWarning, match="threshold -1.0 < 0"):
        assert len(lit.match(a, b, threshold=-1.0)) == len(lit.match(a, b, threshold=None))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(lit.match(a, a, threshold=1.0 - 1e-6, ratio=1.0)) == 5  # the bounds themselves are fine


def test_asmk_train_refuses_more_words_than_descriptors_and_empty_input():
    from lit.asmk import ASMK

    x = np.random.default_rng(0).standard_normal((100, 16)).astype(np.float32)
    with pytest.raises(ValueError, match="100 descriptors cannot make 1000 visual words; pass size <= 100"):
        ASMK.train(x, size=1000)
    with pytest.raises(ValueError, match="no descriptors"):
        ASMK.train(x[:0], size=8)
    assert ASMK.train(x, size=100, iterations=2).codebook.shape == (100, 16)


# ---------------------------------------------------------------------- training CLI (points 17-18)
def test_train_refuses_a_non_empty_out_and_failed_configs_leave_no_folder(tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(TINY.replace("ROOT", str(tmp_path / "missing-photos")))
    out = tmp_path / "runs" / "a"
    proc = run("train", "--config", cfg, "--out", out, "--device", "cpu")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "missing-photos" in proc.stderr
    assert not (tmp_path / "runs").exists()  # nothing left by the failed run
    out.mkdir(parents=True)
    (out / "metrics.jsonl").write_text('{"epoch": 0}\n')
    proc = run("train", "--config", cfg, "--out", out, "--device", "cpu")
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
    cfg.write_text(TINY.replace("ROOT", str(photos(tmp_path / "p", 12))))
    out = tmp_path / "run"
    proc = run("train", "--config", cfg, "--out", out, "--device", "cpu", "--set", "data.num_workers=64",
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


def test_metrics_plot_axes_for_one_epoch(tmp_path):
    from lit.train import plot_metrics

    fig = plot_metrics([{"epoch": 0, "val_map": 1.0}, {"epoch": 1, "loss": 0.02, "attention_loss": 0.05,
                                                       "superfeature_loss": 0.4, "val_map": 1.0}], tmp_path / "m.png")
    ax_loss, ax_map = fig.axes
    assert ax_map.get_ylim() == (0.0, 100.0)
    assert ax_map.get_xlim() == (-0.5, 1.5) and all(float(t).is_integer() for t in ax_map.get_xticks())
    assert ax_loss.get_ylim()[0] == 0.0 and ax_loss.get_ylim()[1] > 0.02


def test_stdout_is_line_buffered_when_redirected(tmp_path):
    script = ("import sys\nfrom lit.cli import main\n"
              "try:\n    main(['train', '--config', sys.argv[1], '--out', sys.argv[2], '--device', 'cpu'])\n"
              "except (ValueError, SystemExit):\n    pass\nprint(sys.stdout.line_buffering)\n")
    proc = subprocess.run([sys.executable, "-c", script, os.path.join(REPO, "configs", "own_photos.yaml"), str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=300)
    assert proc.stdout.strip().splitlines()[-1] == "True", proc.stderr


# ---------------------------------------------------------------------- CLI (points 19-20)
def test_help_version_and_models():
    top = run("--help")
    assert top.returncode == 0 and "``" not in top.stdout and "returns it" not in top.stdout
    assert "train a super-feature model" in top.stdout and "features" in top.stdout
    assert run("--version").stdout.strip() == f"lit {lit.__version__}"
    models = run("models").stdout.splitlines()
    default = [line for line in models if line.startswith("*")]
    assert len(default) == 2 and default[0].split()[1] == lit.DEFAULT_MODEL and "installed (" in default[0]
    assert any(line.split()[:1] == ["fire"] and "lit download fire" in line for line in models)


def test_svg_figures_are_accepted(tmp_path):
    from matplotlib.figure import Figure

    from lit.viz import save_figure

    path = save_figure(Figure(), tmp_path / "x.svg")
    assert open(path).read(200).lstrip().startswith("<?xml")


def test_features_merge_checks_model_and_rebases_names(tmp_path, tiny_model):
    from lit.features import FeatureStore
    from lit.pipeline import extract_to_file

    a, b = photos(tmp_path / "set" / "a", 2), photos(tmp_path / "set" / "b", 3)
    extract_to_file(tiny_model, sorted(a.iterdir()), tmp_path / "a.h5", progress=False)
    extract_to_file(tiny_model, sorted(b.iterdir()), tmp_path / "b.h5", progress=False)
    extract_to_file(tiny_model, sorted(b.iterdir())[:1], tmp_path / "b1.h5", progress=False)
    proc = run("features", "merge", tmp_path / "a.h5", tmp_path / "b.h5", tmp_path / "b1.h5", "--out", tmp_path / "all.h5")
    assert proc.returncode == 0, proc.stderr
    assert "5 images, 1 duplicates stored once" in proc.stdout
    with FeatureStore(tmp_path / "all.h5") as m, FeatureStore(tmp_path / "b.h5") as sb:
        assert m.names == ["a/p00.png", "a/p01.png", "b/p00.png", "b/p01.png", "b/p02.png"]
        assert m.root == str(tmp_path / "set") and m.fingerprint == sb.fingerprint
        torch.testing.assert_close(m["b/p02.png"].descriptors, sb["p02.png"].descriptors)
    assert run("features", "merge", tmp_path / "a.h5", "--out", tmp_path / "all.h5").returncode == 2  # exists
    torch.manual_seed(1)
    other = type(tiny_model)(tiny_model.cfg).eval()
    extract_to_file(other, sorted(a.iterdir()), tmp_path / "other.h5", progress=False)
    proc = run("features", "merge", tmp_path / "a.h5", tmp_path / "other.h5", "--out", tmp_path / "bad.h5")
    assert proc.returncode == 2 and "made by another model or with other extraction settings" in proc.stderr
    assert not (tmp_path / "bad.h5").exists()
    save_checkpoint(tiny_model, tmp_path / "m.pt")
