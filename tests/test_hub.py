"""Model registry: download into the cache with sha256 checks (never the network)."""

import hashlib
import http.server
import threading
from functools import partial

import pytest
import torch

import lit
from lit import hub
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
    monkeypatch.setitem(hub.REGISTRY, "tiny-test", cfg)
    return cfg


def test_download_once_and_load_by_name(cache, served, monkeypatch, tiny_model):
    url, digest = served
    _register(monkeypatch, url=url, sha256=digest)
    model = lit.load_model("tiny-test", progress=False)
    assert (cache / "fire_tiny.pth").is_file()
    image = torch.rand(3, 64, 64)
    torch.testing.assert_close(model.extract(image).descriptors, tiny_model.extract(image).descriptors)
    monkeypatch.setitem(hub.REGISTRY, "tiny-test", hub.PretrainedCfg(name="tiny-test", filename="fire_tiny.pth", url="http://127.0.0.1:9/gone", sha256=digest))
    assert lit.load_model("tiny-test").cfg == tiny_model.cfg  # cached: no second download


def test_hash_mismatch_is_refused(cache, served, monkeypatch):
    url, _ = served
    _register(monkeypatch, url=url, sha256="0" * 64)
    with pytest.raises(ValueError, match="sha256"):
        lit.load_model("tiny-test", progress=False)
    assert not (cache / "fire_tiny.pth").exists()


def test_cached_file_that_changed_is_refused(cache, served, monkeypatch):
    url, digest = served
    _register(monkeypatch, url=url, sha256=digest)
    path = hub.resolve("tiny-test", progress=False)
    path.write_bytes(path.read_bytes() + b"tampered")
    with pytest.raises(ValueError, match="does not match"):
        hub.resolve("tiny-test")


def test_unpublished_hash_is_recorded_then_checked(cache, served, monkeypatch):
    url, digest = served
    _register(monkeypatch, url=url, sha256=None)
    with pytest.warns(UserWarning, match="recorded"):
        path = hub.resolve("tiny-test", progress=False)
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
