"""The ``lit`` command line: one module per command, each parsing its options, calling the
library and printing; no policy lives here.

A command module has ``NAME`` (the command), ``HELP`` (one line), optionally
``DESCRIPTION`` (its ``--help`` text) and ``RAW_ARGUMENTS`` (hand every argument to its own
parser), ``add_arguments(parser)`` and ``run(args) -> int``. Modules import only the standard
library at import time, and only the chosen command's options are built, so ``lit --help``
and ``lit --version`` answer at once.

Errors: a :class:`lit.errors.LitError` (what the user can fix) is printed as one line on
stderr with exit status 2; a closed output pipe (``lit ... | head``) ends the command
quietly with status 141, as Unix tools ended by SIGPIPE; anything else is a bug and keeps its traceback
(``LIT_DEBUG=1`` shows the traceback of user errors too). Library code logs through
``logging``; here its records go to stderr, warnings as ``lit COMMAND: warning: ...``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

#: Command modules, in the order of ``lit --help``.
COMMANDS = (
    "models", "extract", "features", "index", "add", "remove", "search", "match", "plot_attention", "download", "evaluate", "demo",
    "train", "text", "train_global", "evaluate_global", "serve",
)


def _module(name: str):
    return importlib.import_module(f"{__name__}.{name}")


def _command_name(module_name: str) -> str:
    return module_name.replace("_", "-")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of ``lit``; the options of ``command`` only (the others are listed)."""
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="lit", description="Landmark image retrieval with super-features (FIRe / LIT).",
        epilog="`lit COMMAND --help` describes each command. User errors are one line on stderr with exit "
               "status 2 (LIT_DEBUG=1 shows the traceback).",
    )
    parser.add_argument("--version", action="version", version=f"lit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        mod = _module(name)
        description = getattr(mod, "DESCRIPTION", mod.HELP)
        raw = "\n" in description
        p = sub.add_parser(mod.NAME, help=mod.HELP, description=description, add_help=not getattr(mod, "RAW_ARGUMENTS", False),
                           formatter_class=argparse.RawDescriptionHelpFormatter if raw else argparse.HelpFormatter)
        if mod.NAME == command:
            mod.add_arguments(p)
            p.set_defaults(run=mod.run)
    return parser


class _Formatter(logging.Formatter):
    """Info as it is; warnings as ``lit COMMAND: warning: ...``."""

    def __init__(self, command: str) -> None:
        super().__init__()
        self.prefix = f"lit {command}: warning: "

    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        if getattr(record, "lit_plain", False):  # a line of its own format, e.g. "skipped: NAME: problem"
            return msg
        return self.prefix + msg if record.levelno >= logging.WARNING else msg


def _setup_logging(command: str) -> logging.Handler:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter(command))
    logger = logging.getLogger("lit")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    return handler


def _silence_stdout() -> None:
    """Point stdout at /dev/null: Python's flush at exit must not fail on the closed pipe."""
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, sys.stdout.fileno())
        os.close(null)
    except (OSError, ValueError):  # pragma: no cover - stdout without a file descriptor
        pass


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``lit ARGS``; returns the exit status."""
    from ..errors import LitError

    argv = list(sys.argv[1:] if argv is None else argv)
    names = {_command_name(n): n for n in COMMANDS}
    command = next((a for a in argv if not a.startswith("-")), None)
    command = command if command in names else None
    parser = build_parser(command)
    if command is not None and getattr(_module(names[command]), "RAW_ARGUMENTS", False):
        i = argv.index(command)
        args = argparse.Namespace(command=command, rest=argv[i + 1:], run=_module(names[command]).run)
    else:
        args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help()
        return 2
    handler = _setup_logging(args.command)
    status = 1
    try:
        status = int(args.run(args) or 0)
    except KeyboardInterrupt:
        print("lit: interrupted", file=sys.stderr)
        status = 130
    except BrokenPipeError:  # `lit ... | head`: the reader is gone; end quietly, as Unix tools do
        _silence_stdout()
        status = 141  # 128 + SIGPIPE: what the shell reports for a tool that SIGPIPE ended
    except LitError as err:
        if os.environ.get("LIT_DEBUG"):
            raise
        msg = (getattr(err, "cli", None) or str(err)).strip().splitlines()
        print(f"lit {args.command}: error: {msg[0] if msg else type(err).__name__}", file=sys.stderr)
        for line in msg[1:6]:
            print(f"  {line.strip()}", file=sys.stderr)
        status = 2
    finally:
        logging.getLogger("lit").removeHandler(handler)
        hdf5 = sys.modules.get("lit._hdf5")  # a process that must skip HDF5's shutdown exits with it
        if hdf5 is not None:
            hdf5.note_exit_status(status)
    return status


if __name__ == "__main__":
    sys.exit(main())
