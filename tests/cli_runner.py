"""``lit ARGS`` run in this process through :func:`lit.cli.main`, for tests that check a
command's output, exit status and files: no interpreter start and no torch import per call
(seconds each). Tests where the process itself is the point (torchrun, signals, import time,
environment read at start) run ``python -m lit`` in a subprocess instead."""

import contextlib
import io
import logging
import os
import subprocess
import sys
import warnings


def run_lit(*args, ok=True, env=None, cwd=None):
    """Run ``lit *args``; returns a :class:`subprocess.CompletedProcess` (``returncode``,
    ``stdout``, ``stderr`` of this call). ``ok=True`` asserts exit status 0. ``env`` sets
    environment variables for the call (lit's registry, read on first use, is read afresh
    under it); ``cwd`` is the current folder during the call."""
    import lit.hub
    from lit.cli import main

    argv = [str(a) for a in args]
    out, err = io.StringIO(), io.StringIO()
    saved_env = {key: os.environ.get(key) for key in (env or {})}
    saved_registry, saved_cwd = lit.hub._REGISTRY, os.getcwd()
    saved_level = logging.getLogger("lit").level  # main() sets INFO for its own handler
    try:
        os.environ.update({key: str(value) for key, value in (env or {}).items()})
        if env:
            lit.hub._REGISTRY = None
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
            _warn_like_a_fresh_interpreter()
            try:
                code = main(argv)
            except SystemExit as exc:  # argparse: --help, --version, bad options
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        logging.getLogger("lit").setLevel(saved_level)
        os.chdir(saved_cwd)
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if env:
            lit.hub._REGISTRY = saved_registry
    proc = subprocess.CompletedProcess(["lit", *argv], code, out.getvalue(), err.getvalue())
    if ok:
        assert proc.returncode == 0, proc.stderr
    return proc


def _warn_like_a_fresh_interpreter():
    """Python warnings go to (the redirected) stderr under Python's default filters, as in
    ``python -m lit``, rather than to pytest's warning summary."""
    warnings.simplefilter("default")
    for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
        warnings.filterwarnings("ignore", category=category)

    def show(message, category, filename, lineno, file=None, line=None):
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))

    warnings.showwarning = show
