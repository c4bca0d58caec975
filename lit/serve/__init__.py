"""The search service (``lit serve INDEX``): a JSON API and a web page over one live index.

Needs the ``serve`` extra (``pip install 'lit[serve]'``: FastAPI, uvicorn, python-multipart)::

    from lit.serve import open_service, create_app
    service = open_service("i.h5")            # the model, the text model and the index, once
    app = create_app(service, token=None)     # an ASGI app: uvicorn, or starlette's TestClient

- :mod:`lit.serve.service`: what the service does (search, add, remove, matches,
  attention), blocking and thread-safe, with no web in it;
- :mod:`lit.serve.app`: the web layer (routes, errors as JSON, upload limit, time limit,
  token for the write endpoints, the page from ``lit/serve/static``);
- :func:`serve`: runs the app with uvicorn until stopped.
"""

from __future__ import annotations

import ipaddress
import logging
import os

from ..errors import UsageError, missing_dependency

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "check_exposure", "create_app", "is_loopback", "listen", "open_service", "read_token",
           "require_serve_packages", "serve"]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000


def require_serve_packages() -> None:
    """Raise :class:`lit.errors.MissingDependencyError` (``pip install 'lit[serve]'``) when a
    package of the ``serve`` extra is missing."""
    import importlib

    for module, package in (("fastapi", "fastapi"), ("uvicorn", "uvicorn"), ("python_multipart", "python-multipart")):
        try:
            importlib.import_module(module)
        except ImportError:
            raise missing_dependency("the search service", package, "serve") from None


def create_app(service, **kwargs):
    """See :func:`lit.serve.app.create_app`."""
    require_serve_packages()
    from .app import create_app as _create

    return _create(service, **kwargs)


def open_service(index: str | os.PathLike, *, model=None, device: str = "auto", upload_dir=None, max_pixels=None,
                 text: bool | None = None, text_model=None, model_name: str | None = None, warm_up: bool = True):
    """Open ``index`` as a live index and return a :class:`~lit.serve.service.SearchService`.

    Args:
        model: a loaded model (default: the one the index records, else lit's default).
        model_name: its name for :meth:`~lit.serve.service.SearchService.health` (default:
            the name of the model loaded here, else the model's class).
        device: where the models and the index live.
        upload_dir, max_pixels: see :class:`~lit.serve.service.SearchService` (``max_pixels``
            ``None``: lit's default, ``0``: no limit).
        text: offer search by words (``None``: when the index holds embeddings).
        text_model: the text model or its name (default ``lit-text-effl0``).
        warm_up: load everything and run one text query now, so that the first request does
            not wait.
    """
    from .. import DEFAULT_MODEL
    from .._device import resolve_device
    from .._image import DEFAULT_MAX_PIXELS
    from ..index_file import read_info
    from ..pipeline.live import LiveIndex
    from .service import SearchService

    device = str(resolve_device(device))
    loaded_text = None
    if text is not False and read_info(index) is not None and _has_text(index):
        from ..text import load_text_model

        loaded_text = text_model if hasattr(text_model, "embed_texts") else load_text_model(text_model, device)
    live = LiveIndex.open(index, model=model, device=device, text_model=loaded_text)
    try:
        if model is None and model_name is None:
            model_name = (live.info.settings or {}).get("model") or DEFAULT_MODEL  # what LiveIndex loads
        service = SearchService(live, upload_dir=upload_dir, text=text, model_name=model_name,
                                max_pixels=DEFAULT_MAX_PIXELS if max_pixels is None else (max_pixels or None))
        _ = live.model  # loaded now, not at the first request
        if warm_up and service.text and len(live):
            live.search_text(["a photo"], topk=1)
    except BaseException:
        live.close()
        raise
    return service


def _has_text(index) -> bool:
    from ..errors import LitError
    from ..index_file import read_text

    try:
        read_text(index)
    except LitError:
        return False
    return True


def is_loopback(host: str) -> bool:
    """Whether ``host`` is this machine only (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, token: str | None, insecure: bool) -> None:
    """Refuse to serve another address than this machine's without a token for the write
    endpoints, unless ``insecure``."""
    if not is_loopback(host) and token is None and not insecure:
        raise UsageError(f"serving on {host} lets anyone who reaches it add and delete photos: give a token file "
                         "(token_file), or accept it explicitly (insecure)",
                         cli=f"--host {host} lets anyone who reaches it add and delete photos: give --token-file F "
                             "(clients send 'Authorization: Bearer TOKEN'), or --insecure")


def read_token(path: str | os.PathLike) -> str:
    """The token in ``path`` (its first line, stripped)."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            token = f.readline().strip()
    except OSError as err:
        raise UsageError(f"{path}: cannot read the token file ({err.strerror or err})") from None
    if len(token) < 8:
        raise UsageError(f"{path}: the token must be at least 8 characters on the file's first line")
    if os.name == "posix" and os.stat(path).st_mode & 0o077:
        log.warning(f"{path}: the token file is readable by other users (chmod 600 {path})")
    return token


def listen(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT):
    """A socket bound to ``host:port`` (port 0: a free one), or a one-line error."""
    import socket

    addr = "127.0.0.1" if host == "localhost" else host.strip("[]")
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((addr, port))
    except OSError as err:
        sock.close()
        raise UsageError(f"cannot listen on {host}:{port}: {err.strerror or err}", cli=f"cannot listen on {host}:{port}: "
                         f"{err.strerror or err} (--host, --port; --port 0 picks a free port)") from None
    sock.set_inheritable(True)
    return sock


def serve(service, *, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, token: str | None = None,
          insecure: bool = False, on_listen=None, **app_kwargs) -> None:
    """Serve until stopped (Ctrl-C or SIGTERM); the service is closed on the way out.

    Args:
        on_listen: called with the URL once the socket is bound (``port=0`` picks a free port).
        app_kwargs: for :func:`lit.serve.app.create_app` (``max_upload_bytes``, ``timeout``).
    """
    check_exposure(host, token, insecure)
    require_serve_packages()
    import uvicorn

    app = create_app(service, token=token, **app_kwargs)
    sock = listen(host, port)
    try:
        bound = sock.getsockname()[1]
        shown = f"[{host}]" if ":" in host else host
        if on_listen is not None:
            on_listen(f"http://{shown}:{bound}")
        config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=5)
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
