"""How lit shows and stores file names (and other text a user gave): one rule, everywhere.

- :func:`display_name`: the form shown in messages, on the console, in CSV files and in
  JSON's ``name`` fields: valid UTF-8 on one line, undecodable bytes as ``\\xNN``,
  control characters escaped;
- :func:`encode_name` / :func:`decode_name`: the exact bytes of a name (feature and index
  files store them; JSON results add them as hex where the shown name differs).
"""

from __future__ import annotations

import os
import re

__all__ = ["decode_name", "display_name", "encode_name", "escape_undecodable", "json_fields", "name_bytes_hex", "shown_to_name"]

#: Characters that would change what a terminal shows or split a line: C0 and C1 controls,
#: DEL, line and paragraph separators, and bidirectional overrides.
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_SHORT_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_char(match: re.Match) -> str:
    c = match.group()
    if c in _SHORT_ESCAPES:
        return _SHORT_ESCAPES[c]
    return f"\\x{ord(c):02x}" if ord(c) < 0x80 else f"\\u{ord(c):04x}"


def display_name(name: str | bytes | os.PathLike) -> str:
    """A printable, one-line, valid-UTF-8 form of a file name (or any text a user gave), for
    messages, the console, JSON and CSV: the one rule of how lit shows names.

    Names that are valid UTF-8 and printable are returned unchanged. Bytes that are not
    UTF-8 (a Latin-1 ``caf\\xe9.jpg`` read by Python as ``'caf\\udce9.jpg'``) are written
    as ``\\xNN``; control characters as ``\\n``, ``\\t``, ``\\r``, ``\\xNN`` (below 0x80)
    or ``\\uNNNN`` (C1 controls, line separators, bidirectional overrides), so that a name
    never splits a line or drives the terminal. The stored name itself keeps the exact bytes
    (:func:`encode_name`); JSON results add them where the shown name differs
    (:func:`lit.pipeline.results_to_dict`).
    """
    return _UNPRINTABLE.sub(_escape_char, escape_undecodable(name))


def escape_undecodable(name: str | bytes | os.PathLike) -> str:
    """``name`` as valid UTF-8 with only its undecodable bytes escaped (``\\xNN``): what
    :func:`display_name` showed before it escaped control characters too (feature files of
    that time store their names so)."""
    if isinstance(name, os.PathLike):
        name = os.fspath(name)
    raw = name if isinstance(name, bytes) else name.encode("utf-8", "surrogateescape")
    return raw.decode("utf-8", "backslashreplace")


_ESCAPE = re.compile(r"\\(x[0-9a-f]{2}|u[0-9a-f]{4}|[nrt])")


def shown_to_name(shown: str) -> str:
    """The name that :func:`display_name` shows as ``shown``: its escapes (``\\xNN`` a byte,
    ``\\uNNNN`` a character, ``\\n``, ``\\r``, ``\\t``) read back, the undecodable bytes
    as :func:`decode_name` gives them. What lets a client that got a shown name (a web page,
    a JSON reader) name the photo again.

    A real name that holds such an escape literally (a backslash, then ``x41``) shows as
    itself: look a name up as given first, and through this only when it is not found.
    """
    out, pos = bytearray(), 0
    for m in _ESCAPE.finditer(shown):
        out += shown[pos:m.start()].encode("utf-8", "surrogateescape")
        code = m.group(1)
        if code[0] == "x":
            out.append(int(code[1:], 16))
        elif code[0] == "u":
            out += chr(int(code[1:], 16)).encode("utf-8", "surrogatepass")
        else:
            out += {"n": b"\n", "r": b"\r", "t": b"\t"}[code]
        pos = m.end()
    out += shown[pos:].encode("utf-8", "surrogateescape")
    return decode_name(bytes(out))


def encode_name(name: str | os.PathLike) -> bytes:
    """The exact bytes of a file name (``os.fsencode``: undecodable bytes survive)."""
    return os.fsencode(name)


def decode_name(raw: bytes) -> str:
    """Inverse of :func:`encode_name`: the ``str`` that ``open`` and ``os.listdir`` use."""
    return os.fsdecode(bytes(raw))


def name_bytes_hex(name: str) -> str | None:
    """The exact bytes of ``name`` in hex where :func:`display_name` shows it otherwise
    (undecodable bytes, control characters), else ``None``: what makes a shown name
    reversible (``decode_name(bytes.fromhex(h))``)."""
    return None if display_name(name) == name else encode_name(name).hex()


def json_fields(key: str, name: str | None) -> dict:
    """A name as JSON fields: ``{key: shown name}``, plus ``{key + "_bytes": hex}`` where the
    shown name differs from the real one (:func:`name_bytes_hex`): valid UTF-8 (no lone
    surrogates) and reversible."""
    if name is None:
        return {key: None}
    raw = name_bytes_hex(name)
    return {key: display_name(name)} if raw is None else {key: display_name(name), key + "_bytes": raw}
