"""Downloads from a loopback HTTP server: hashes, resume, fallbacks, file:// URLs."""

import hashlib
import http.server
import os
import re
import threading
from pathlib import Path

import pytest

from lit._download import DownloadError, cache_dir, download_url, file_sha256

PAYLOAD = bytes(range(256)) * 1000 + b"tail"  # 256004 bytes
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves PAYLOAD at several paths with different behaviours.

    /ranged    honours ``Range: bytes=N-`` (206 Partial Content)
    /norange   ignores Range headers (always 200 with the whole file)
    /truncated announces the full length but closes after half of it
    anything else: 404
    """

    protocol_version = "HTTP/1.1"
    log: list = []

    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_GET(self):
        self.log.append({"path": self.path, "range": self.headers.get("Range")})
        data = PAYLOAD
        if self.path not in ("/ranged", "/norange", "/truncated"):
            self.send_error(404)
            return
        rng = self.headers.get("Range")
        if self.path == "/ranged" and rng:
            m = re.match(r"bytes=(\d+)-$", rng)
            start = int(m.group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.send_header("Content-Length", str(len(data) - start))
            self.end_headers()
            # logged before writing: the client may finish reading before this thread resumes
            self.log[-1]["sent"] = len(data) - start
            self.wfile.write(data[start:])
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Accept-Ranges", "bytes" if self.path == "/ranged" else "none")
        self.end_headers()
        if self.path == "/truncated":
            self.log[-1]["sent"] = len(data) // 2
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.log[-1]["sent"] = len(data)
        self.wfile.write(data)


@pytest.fixture
def server(monkeypatch):
    """A threaded HTTP server on 127.0.0.1 (loopback only), with proxies bypassed."""
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "*")
    monkeypatch.setenv("NO_PROXY", "*")
    _Handler.log = []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", _Handler.log
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def test_download_with_matching_sha256(server, tmp_path):
    base, log = server
    dst = tmp_path / "sub" / "file.bin"
    out = download_url(f"{base}/ranged", dst, sha256=PAYLOAD_SHA.upper(), progress=False)
    assert out == dst and dst.read_bytes() == PAYLOAD
    assert not (tmp_path / "sub" / "file.bin.part").exists()
    assert log[-1]["range"] is None


def test_sha256_mismatch_removes_the_download_and_names_both_hashes(server, tmp_path):
    base, _ = server
    dst = tmp_path / "file.bin"
    wrong = "0" * 64
    with pytest.raises(DownloadError) as info:
        download_url(f"{base}/ranged", dst, sha256=wrong, progress=False)
    msg = str(info.value)
    assert "file.bin" in msg and wrong in msg and PAYLOAD_SHA in msg
    assert not dst.exists() and not (tmp_path / "file.bin.part").exists()


def test_progress_off_prints_nothing_and_on_shows_a_bar(server, tmp_path, capsys):
    base, _ = server
    download_url(f"{base}/ranged", tmp_path / "a.bin", progress=False)
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""
    download_url(f"{base}/ranged", tmp_path / "b.bin", progress=True)
    assert "b.bin" in capsys.readouterr().err
    assert (tmp_path / "b.bin").read_bytes() == PAYLOAD


def test_resume_asks_only_for_the_missing_bytes(server, tmp_path):
    base, log = server
    dst = tmp_path / "file.bin"
    have = 100_000
    (tmp_path / "file.bin.part").write_bytes(PAYLOAD[:have])
    download_url(f"{base}/ranged", dst, sha256=PAYLOAD_SHA, progress=False)
    assert dst.read_bytes() == PAYLOAD
    assert log[-1]["range"] == f"bytes={have}-"
    assert log[-1]["sent"] == len(PAYLOAD) - have


def test_resume_falls_back_to_a_full_download_without_range_support(server, tmp_path):
    base, log = server
    dst = tmp_path / "file.bin"
    (tmp_path / "file.bin.part").write_bytes(b"garbage" * 10)
    download_url(f"{base}/norange", dst, sha256=PAYLOAD_SHA, progress=False)
    assert dst.read_bytes() == PAYLOAD
    assert log[-1]["range"] is not None and log[-1]["sent"] == len(PAYLOAD)


def test_unsatisfiable_range_restarts(server, tmp_path):
    base, log = server
    dst = tmp_path / "file.bin"
    (tmp_path / "file.bin.part").write_bytes(b"x" * (len(PAYLOAD) + 10))  # longer than the file
    download_url(f"{base}/ranged", dst, sha256=PAYLOAD_SHA, progress=False)
    assert dst.read_bytes() == PAYLOAD
    assert [e["range"] for e in log] == [f"bytes={len(PAYLOAD) + 10}-", None]


def test_resume_false_discards_the_partial_file(server, tmp_path):
    base, log = server
    (tmp_path / "file.bin.part").write_bytes(PAYLOAD[:5000])
    download_url(f"{base}/ranged", tmp_path / "file.bin", resume=False, progress=False)
    assert log[-1]["range"] is None
    assert (tmp_path / "file.bin").read_bytes() == PAYLOAD


def test_interrupted_download_keeps_the_part_file_and_resumes(server, tmp_path):
    base, log = server
    dst = tmp_path / "file.bin"
    with pytest.raises(OSError, match="resume"):
        download_url(f"{base}/truncated", dst, sha256=PAYLOAD_SHA, progress=False)
    part = tmp_path / "file.bin.part"
    assert not dst.exists() and part.is_file()
    assert 0 < part.stat().st_size <= len(PAYLOAD) // 2
    download_url(f"{base}/ranged", dst, sha256=PAYLOAD_SHA, progress=False)
    assert dst.read_bytes() == PAYLOAD
    assert log[-1]["range"] == f"bytes={len(PAYLOAD) // 2}-"


def test_http_errors_name_the_url(server, tmp_path):
    base, _ = server
    with pytest.raises(OSError, match="404"):
        download_url(f"{base}/missing", tmp_path / "x.bin", progress=False)
    assert not (tmp_path / "x.bin").exists()


def test_file_urls(tmp_path):
    src = tmp_path / "src dir" / "payload.bin"
    src.parent.mkdir()
    src.write_bytes(PAYLOAD)
    dst = tmp_path / "out" / "copy.bin"
    download_url(src.as_uri(), dst, sha256=PAYLOAD_SHA, progress=False)
    assert dst.read_bytes() == PAYLOAD
    with pytest.raises(DownloadError, match="sha256 mismatch"):
        download_url(src.as_uri(), tmp_path / "bad.bin", sha256="f" * 64, progress=False)
    assert not (tmp_path / "bad.bin").exists() and not (tmp_path / "bad.bin.part").exists()
    with pytest.raises(FileNotFoundError):
        download_url((tmp_path / "nope.bin").as_uri(), tmp_path / "n.bin", progress=False)


def test_arguments_are_validated(tmp_path):
    with pytest.raises(ValueError, match="scheme"):
        download_url("ftp://example.org/x", tmp_path / "x", progress=False)
    with pytest.raises(ValueError, match="64 hexadecimal"):
        download_url((tmp_path / "x").as_uri(), tmp_path / "y", sha256="abc", progress=False)
    with pytest.raises(TypeError):
        download_url(Path("/x"), tmp_path / "y", progress=False)


def test_file_sha256(tmp_path):
    p = tmp_path / "f"
    p.write_bytes(PAYLOAD)
    assert file_sha256(p) == PAYLOAD_SHA
    assert file_sha256(p, chunk_size=7) == PAYLOAD_SHA


def test_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("LIT_CACHE", str(tmp_path / "cache"))
    assert cache_dir() == tmp_path / "cache"
    monkeypatch.delenv("LIT_CACHE")
    import torch.hub

    assert cache_dir() == Path(torch.hub.get_dir()) / "lit"
    assert not os.environ.get("LIT_CACHE")
