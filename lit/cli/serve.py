"""``lit serve``: the search service and its web page over one index, until stopped."""

from __future__ import annotations

import sys

from ._common import add_model_arguments

NAME = "serve"
HELP = "serve an index: a JSON API and a web page (search by photo or words, matches, live adds)"
DESCRIPTION = """Serve INDEX until stopped (Ctrl-C): the model, the text model and the index are loaded
once; the page is at http://HOST:PORT/, the JSON API under /api (its OpenAPI page at /docs).

Security: it listens on 127.0.0.1 (this machine only) unless --host says otherwise. Adding and
deleting photos (POST /api/images, DELETE /api/images/NAME) then needs the token of
--token-file (clients send 'Authorization: Bearer TOKEN'); another --host without a token is
refused unless --insecure. Uploads are at most --max-upload-mb and --max-pixels; a request
answers 504 after --timeout seconds.

Photos added through the service are stored in --upload-dir (default INDEX_STEM-uploads/
beside the index) and added to the index file before the answer (a killed server loses at
most the request in flight); the photos the index was built from are never written or
deleted. Needs the serve extra: pip install 'lit[serve]'."""


def add_arguments(p) -> None:
    p.add_argument("index", help="index file from `lit index`")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: a free one, printed)")
    p.add_argument("--token-file", help="file whose first line is the token that adding and deleting photos needs")
    p.add_argument("--insecure", action="store_true", help="serve another address than 127.0.0.1 without a token")
    p.add_argument("--upload-dir", help="folder for photos added through the service (default: INDEX_STEM-uploads/)")
    p.add_argument("--max-upload-mb", type=float, default=20, help="largest upload in MB (default 20)")
    p.add_argument("--max-pixels", type=int, default=None,
                   help="uploads that decode to more pixels are refused (default 180000000; 0: no limit)")
    p.add_argument("--text-model", default=None, help="text model for search by words (default: lit-text-effl0)")
    p.add_argument("--timeout", type=float, default=120, help="seconds before a request answers 504 (default 120)")
    add_model_arguments(p, extraction=False)


def run(args) -> int:
    from .. import serve as service_mod
    from ..errors import UsageError

    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port must be between 0 and 65535, got {args.port}")
    if args.max_upload_mb <= 0 or args.timeout <= 0:
        raise UsageError("--max-upload-mb and --timeout must be positive")
    if args.max_pixels is not None and args.max_pixels < 0:
        raise UsageError(f"--max-pixels must be 0 (no limit) or positive, got {args.max_pixels}")
    token = service_mod.read_token(args.token_file) if args.token_file else None
    service_mod.check_exposure(args.host, token, args.insecure)
    service_mod.require_serve_packages()
    sock = service_mod.listen(args.host, args.port)  # a port in use fails now, before the model loads
    sock.close()
    model = None
    if args.model:
        from ._common import load_model

        model = load_model(args)
    print(f"lit serve: loading {args.index} ...", file=sys.stderr, flush=True)
    service = service_mod.open_service(args.index, model=model, device=args.device, upload_dir=args.upload_dir,
                                       max_pixels=args.max_pixels, text_model=args.text_model,
                                       model_name=args.model)

    def said(url: str) -> None:
        where = "this machine only" if service_mod.is_loopback(args.host) else "the network"
        writes = "adding and deleting photos needs the token" if token else "no token"
        print(f"lit serve: {len(service.index)} photos of {args.index}, model {service.health()['model']}; "
              f"serving {url}/ ({where}; {writes}; API docs {url}/docs); Ctrl-C stops", file=sys.stderr, flush=True)

    try:
        service_mod.serve(service, host=args.host, port=args.port, token=token, insecure=args.insecure, on_listen=said,
                          max_upload_bytes=int(args.max_upload_mb * 1024 * 1024), timeout=args.timeout)
    except KeyboardInterrupt:  # Ctrl-C is how a server is stopped: uvicorn has shut down cleanly
        pass
    finally:
        service.close()
    print("lit serve: stopped", file=sys.stderr)
    return 0
