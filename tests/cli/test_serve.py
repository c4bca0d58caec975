"""``lit serve``: its security defaults, its one-line errors, and a real run on a loopback port."""

import os
import re
import signal
import subprocess
import sys
import time

import pytest


def run_main(*args):
    from lit.cli import main

    return main(["serve", *map(str, args)])


def test_without_the_serve_extra_it_says_what_to_install(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "fastapi", None)  # import fastapi now fails
    assert run_main(tmp_path / "i.h5") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install 'lit[serve]'" in err[0]


def test_another_address_without_a_token_is_refused(capsys, tmp_path):
    assert run_main(tmp_path / "i.h5", "--host", "0.0.0.0") == 2
    err = capsys.readouterr().err
    assert "--host 0.0.0.0" in err and "--token-file" in err and "--insecure" in err


@pytest.mark.parametrize("content, says", [("short", "at least 8 characters"), (None, "cannot read the token file")])
def test_a_bad_token_file_is_refused(capsys, tmp_path, content, says):
    token = tmp_path / "token"
    if content is not None:
        token.write_text(content)
    assert run_main(tmp_path / "i.h5", "--token-file", token) == 2
    assert says in capsys.readouterr().err


def test_a_port_in_use_is_one_line(capsys, tmp_path):
    pytest.importorskip("fastapi", reason="the serve extra (pip install 'lit[serve]') is not installed")
    from lit.serve import listen

    sock = listen("127.0.0.1", 0)
    sock.listen(1)
    try:
        assert run_main(tmp_path / "i.h5", "--port", sock.getsockname()[1]) == 2
    finally:
        sock.close()
    assert "cannot listen on 127.0.0.1:" in capsys.readouterr().err


def test_serves_on_loopback_until_interrupted(tmp_path, tiny_model):
    pytest.importorskip("fastapi", reason="the serve extra (pip install 'lit[serve]') is not installed")
    import httpx

    from lit._resources import asset_photos
    from lit.models import save_checkpoint
    from lit.pipeline import extract_to_file, make_index

    ckpt, feats, index = tmp_path / "tiny.pt", tmp_path / "f.h5", tmp_path / "i.h5"
    save_checkpoint(tiny_model, ckpt)
    photos = sorted((asset_photos() / "street").iterdir())
    extract_to_file(tiny_model, photos, feats, progress=False)  # no text embeddings: no text model to load
    make_index(feats, index, size=8)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen([sys.executable, "-m", "lit", "serve", index, "--port", "0", "--model", ckpt, "--device", "cpu"],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
    try:
        lines = []
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            lines.append(proc.stderr.readline())
            if "serving http" in lines[-1]:
                break
        said = "".join(lines)
        m = re.search(r"serving (http://127\.0\.0\.1:\d+)/ \(this machine only; no token", said)
        assert m, said
        health = httpx.get(m.group(1) + "/api/health", timeout=60).json()
        assert health["images"] == 2 and health["index"] == str(index) and health["text_search"] is False
        assert "2 photos of" in said
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 0, proc.stderr.read()
