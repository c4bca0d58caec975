"""The web layer: a FastAPI (Starlette) app around a :class:`~lit.serve.service.SearchService`.

Every call into the service (model, index, files) runs in a worker thread
(:func:`anyio.to_thread.run_sync`) under a time limit, so the event loop never blocks and
a slow request answers 504 instead of hanging. Errors are JSON ``{"error": "one
sentence"}`` with a 4xx status for what the client can fix; a bug answers 500 with a
generic sentence (its traceback goes to the log, never to the client).
"""

from __future__ import annotations

import contextlib
import functools
import hmac
import importlib.resources
import logging
from typing import Annotated
from urllib.parse import urlsplit

import anyio
import anyio.to_thread
from fastapi import FastAPI, File, Form, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from .._image import display_name
from .._names import json_fields
from ..errors import ImageTooLargeError, LitError, MissingDependencyError, NotFoundError
from .service import MAX_TOPK, SearchService, UnknownNameError

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_MAX_UPLOAD_BYTES", "DEFAULT_TIMEOUT_S", "create_app"]

#: largest request body (an upload), in bytes
DEFAULT_MAX_UPLOAD_BYTES = 20 * 1024 * 1024
#: longest time a request may take before it answers 504
DEFAULT_TIMEOUT_S = 120.0

_STATIC = {"app.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8"}


class _HTTPError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _status_of(err: LitError) -> int:
    if isinstance(err, ImageTooLargeError):
        return 413
    if isinstance(err, (NotFoundError, UnknownNameError)):
        return 404
    if isinstance(err, MissingDependencyError):
        return 501
    return 400


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _static(name: str) -> bytes:
    return importlib.resources.files("lit.serve").joinpath("static", name).read_bytes()


class _BodyLimit:
    """ASGI middleware: refuse request bodies over ``limit`` bytes (413), by their
    Content-Length when given, else while they stream in."""

    def __init__(self, app, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "DELETE", "OPTIONS"):
            return await self.app(scope, receive, send)
        shown = f"{self.limit / 2**20:g} MB" if self.limit >= 2**20 else f"{self.limit} bytes"
        message = f"the request is larger than the upload limit of {shown}"
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            return await _error(413, message)(scope, receive, send)
        seen = 0
        started = False

        async def counted():
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.limit:
                    raise _HTTPError(413, message)
            return msg

        async def tracked(msg):
            nonlocal started
            started = started or msg["type"] == "http.response.start"
            await send(msg)

        try:
            await self.app(scope, counted, tracked)
        except _HTTPError as err:
            if not started:
                await _error(err.status, str(err))(scope, receive, send)


def create_app(service: SearchService, *, token: str | None = None, max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
               timeout: float = DEFAULT_TIMEOUT_S, close: bool = True) -> FastAPI:
    """The ASGI app of the search service: the JSON API under ``/api``, the page at ``/``,
    the OpenAPI page at ``/docs``.

    Args:
        service: the open service.
        token: when set, adding and deleting photos needs ``Authorization: Bearer TOKEN``.
        max_upload_bytes: largest request body.
        timeout: seconds a request may take before it answers 504.
        close: close the service when the app shuts down.
    """
    import lit

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        if close:
            await anyio.to_thread.run_sync(service.close)

    app = FastAPI(title="lit search service", version=lit.__version__, lifespan=lifespan,
                  description="Search a lit index by photo or by words, see why results match, add and delete photos.")
    # threads waiting for the model are cheap: enough of them that health and text queries
    # find a thread while many photo queries queue for the model
    limiter = anyio.CapacityLimiter(64)

    async def blocking(fn, *args, **kwargs):
        """Run ``fn`` in a worker thread; past ``timeout`` answer 504 (the thread finishes
        on its own: Python cannot stop it)."""
        try:
            with anyio.fail_after(timeout):
                return await anyio.to_thread.run_sync(functools.partial(fn, *args, **kwargs), abandon_on_cancel=True,
                                                      limiter=limiter)
        except TimeoutError:
            raise _HTTPError(504, f"the request took longer than the service's limit of {timeout:g} s") from None

    def check_token(request: Request) -> None:
        """Writes need the token (when set) and, from a browser, a page of this origin: a
        page of another site cannot add or delete photos (a form posted across sites)."""
        origin = request.headers.get("origin")
        if origin and origin != "null" and urlsplit(origin).netloc != request.headers.get("host"):
            raise _HTTPError(403, f"adding and deleting photos from a page of another site ({origin}) is refused")
        if origin == "null":
            raise _HTTPError(403, "adding and deleting photos from a page without an origin is refused")
        if token is None:
            return
        given = request.headers.get("authorization", "")
        if not given.lower().startswith("bearer "):
            raise _HTTPError(401, "adding and deleting photos needs the service's token: send 'Authorization: Bearer TOKEN'")
        if not hmac.compare_digest(given[7:].strip().encode(), token.encode()):
            raise _HTTPError(403, "wrong token")

    @app.exception_handler(_HTTPError)
    async def _http_error(request, err: _HTTPError):
        return _error(err.status, str(err))

    @app.exception_handler(LitError)
    async def _lit_error(request, err: LitError):
        return _error(_status_of(err), str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, err: RequestValidationError):
        first = err.errors()[0] if err.errors() else {}
        where = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")]
        what = first.get("msg", "invalid request")
        if first.get("type") == "missing":
            what = "missing"
        return _error(422, f"{'.'.join(where) or 'request'}: {what}")

    @app.exception_handler(StarletteHTTPException)
    async def _starlette(request, err: StarletteHTTPException):
        return _error(err.status_code, str(err.detail))

    @app.exception_handler(Exception)
    async def _bug(request, err: Exception):
        log.error(f"{request.method} {request.url.path}: internal error", exc_info=err)
        return _error(500, "internal error of the service (its log has the details)")

    # ---------------------------------------------------------------- page
    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page():
        return HTMLResponse(_static("index.html"))

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: str):
        if name not in _STATIC:
            raise _HTTPError(404, f"no such file: {name}")
        return Response(_static(name), media_type=_STATIC[name], headers={"Cache-Control": "no-cache"})

    # ---------------------------------------------------------------- API
    @app.get("/api/health", summary="status, number of images, model, index file")
    async def health():
        out = await blocking(service.health)
        out["write_token"] = token is not None
        return out

    @app.post("/api/search", summary="search by an uploaded photo, by words or by an indexed photo's name")
    async def search(
        image: Annotated[UploadFile | None, File(description="a photo")] = None,
        text: Annotated[str | None, Form(description="words, e.g. 'a church at night'")] = None,
        name: Annotated[str | None, Form(description="the name of a photo in the index")] = None,
        topk: Annotated[int, Form(description=f"results (1 to {MAX_TOPK})")] = 10,
        exclude_self: Annotated[bool, Form(description="leave the query photo itself out")] = False,
        keep_unscored: Annotated[bool, Form(description="also list photos with score 0 (no visual word in common "
                                                        "with the query; by default a list stops at the last "
                                                        "positive score, as lit search)")] = False,
    ):
        given = [k for k, v in (("image", image), ("text", text), ("name", name)) if v is not None]
        if len(given) != 1:
            raise _HTTPError(400, "give exactly one of the fields image, text and name"
                             + (f" (got {', '.join(given)})" if given else ""))
        if image is not None:
            data = await image.read()
            return await blocking(service.search_upload, data, image.filename, topk=topk, exclude_self=exclude_self,
                                  keep_unscored=keep_unscored)
        if text is not None:
            return await blocking(service.search_text, text, topk=topk)
        return await blocking(service.search_name, name, topk=topk, exclude_self=exclude_self,
                              keep_unscored=keep_unscored)

    @app.get("/api/images", summary="the indexed photos' names")
    async def names(offset: Annotated[int, Query(ge=0)] = 0, limit: Annotated[int, Query(ge=1, le=10000)] = 100):
        return await blocking(service.names, offset, limit)

    @app.post("/api/images", status_code=201, summary="add a photo (persisted before the answer; a name already indexed is replaced)")
    async def add(request: Request, image: Annotated[UploadFile, File(description="the photo")],
                  name: Annotated[str | None, Form(description="its name (default: the file name)")] = None):
        check_token(request)
        data = await image.read()
        added = await blocking(service.add, data, name if name is not None else (image.filename or ""))
        return {**json_fields("name", added.name), "replaced": added.replaced, "images": added.images}

    @app.delete("/api/images/{name:path}", summary="remove a photo from the index")
    async def remove(request: Request, name: str):
        check_token(request)
        return await blocking(service.remove, name)

    @app.get("/api/images/{name:path}", summary="an indexed photo, or a JPEG thumbnail of it (size: its longer side)")
    async def image(name: str, size: int | None = None):
        data, media = await blocking(service.thumbnail, name, size)
        return Response(data, media_type=media, headers={"Cache-Control": "no-cache"})

    def parse_ids(ids: str | None) -> list[int] | None:
        try:
            return None if ids is None else [int(i) for i in ids.split(",") if i.strip()]
        except ValueError:
            raise _HTTPError(422, f"ids: comma-separated super-feature numbers, got {display_name(ids)!r}") from None

    @app.get("/api/match", summary="super-feature matches of two indexed photos (attention centroids, similarities)")
    async def match(a: str, b: str):
        return await blocking(service.match, a, b)

    @app.post("/api/match", summary="super-feature matches of an uploaded query photo and an indexed photo b")
    async def match_upload(image: Annotated[UploadFile, File(description="the query photo")],
                           b: Annotated[str, Form(description="the name of an indexed photo")]):
        data = await image.read()
        return await blocking(service.match, None, b, upload=(data, image.filename))

    @app.get("/api/attention/{name:path}", summary="attention maps of an indexed photo's super-features at one scale")
    async def attention(name: str, scale: float = 1.0, ids: str | None = None):
        return await blocking(service.attention, name, scale=scale, ids=parse_ids(ids))

    @app.post("/api/attention", summary="attention maps of an uploaded photo's super-features at one scale")
    async def attention_upload(image: Annotated[UploadFile, File(description="the photo")],
                               scale: Annotated[float, Form()] = 1.0, ids: Annotated[str | None, Form()] = None):
        data = await image.read()
        return await blocking(service.attention, None, scale=scale, ids=parse_ids(ids), upload=(data, image.filename))

    app.add_middleware(_BodyLimit, limit=max_upload_bytes)
    return app
