"""`lit download` and `lit models`: a registry file of one's own, offline downloads that leave nothing behind."""

import hashlib
import json
import os


def test_download_model_from_a_registry_file(tmp_path, ckpt, cli):
    digest = hashlib.sha256(ckpt.read_bytes()).hexdigest()
    reg = tmp_path / "models.json"
    reg.write_text(json.dumps([{"name": "tiny-cli", "url": ckpt.as_uri(), "filename": "tiny.pt", "sha256": digest}]))
    env = {"LIT_REGISTRY": str(reg), "LIT_CACHE": str(tmp_path / "cache")}
    proc = cli("download", "tiny-cli", "--quiet", env=env)
    assert proc.stdout.strip().endswith("tiny.pt") and (tmp_path / "cache" / "tiny.pt").is_file()
    assert "tiny-cli" in cli("models", env=env).stdout
    bad = cli("download", "no-such-thing", ok=False, env=env)
    assert bad.returncode == 2 and "unknown name" in bad.stderr


UNREACHABLE = "http://127.0.0.1:9/weights.pt"  # the discard port: refused at once, no network


def test_offline_model_download_is_one_line_and_leaves_no_folder(tmp_path, cli):
    registry = tmp_path / "models.json"
    registry.write_text(json.dumps([{"name": "offline-model", "url": UNREACHABLE, "filename": "offline.pt"}]))
    cache = tmp_path / "cache" / "lit"
    proc = cli("download", "offline-model", "--quiet", env={"LIT_REGISTRY": str(registry), "LIT_CACHE": str(cache)}, ok=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith(f"lit download: error: cannot reach {UNREACHABLE} (")
    assert f"download it elsewhere and save it as {cache / 'offline.pt'} (or pass the file)" in lines[0]
    assert not (tmp_path / "cache").exists()  # no empty folders left behind


def test_offline_dataset_download_cleans_up_its_folders(tmp_path, cli, monkeypatch):
    import dataclasses

    import lit.data.datasets as ds

    info = ds.DATASETS["roxford5k"]
    files = tuple(dataclasses.replace(f, url=UNREACHABLE) for f in info.files)
    monkeypatch.setattr(ds, "DATASETS", dict(ds.DATASETS, roxford5k=dataclasses.replace(info, files=files)))
    existing = tmp_path / "data"
    existing.mkdir()
    (existing / "mine.txt").write_text("user data")
    proc = cli("download", "roxford5k", "--root", existing, "--quiet", ok=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1 and "cannot reach" in proc.stderr
    assert sorted(os.listdir(existing)) == ["mine.txt"]  # the empty dataset folder is gone, the rest kept
