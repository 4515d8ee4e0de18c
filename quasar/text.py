"""Text that reaches a terminal, a log or a table cell: paths written so that they round-trip
exactly (:func:`encode_path` / :func:`decode_path`), messages with control characters and
undecodable bytes escaped (:func:`safe_text`), CSV cells that no spreadsheet runs as a
formula (:func:`csv_cell`). Imports nothing of ours, so every layer (bundle, runtime,
evaluate, the command layer) can use it.
"""
from __future__ import annotations

import base64
import binascii
import os

#: Prefix of a path written as base64 of its bytes (see :func:`encode_path`).
PATH_MARKER = "b64:"
#: CSV cells starting with one of these get a leading ``'`` (spreadsheet formula injection,
#: OWASP "CSV injection"); :func:`read_table` and ``--resume`` remove it again.
CSV_FORMULA_CHARS = ("=", "+", "-", "@", "\t", "\r", "'")


def _unsafe_char(ch: str) -> bool:
    """Control characters (C0, DEL, C1), lone surrogates (undecodable bytes), line/paragraph
    separators."""
    o = ord(ch)
    return o < 32 or 0x7F <= o <= 0x9F or 0xD800 <= o <= 0xDFFF or o in (0x2028, 0x2029)


def encode_path(path: str) -> str:
    """A path as written in every table (CSV, JSONL, Parquet) and ``.paths.txt``.

    Paths that are valid UTF-8 without control characters are written as they are; any
    other path (bytes that are not UTF-8, seen by Python as surrogate escapes; control
    characters such as ``\r`` ``\n`` ``\t`` ESC; or a path starting with the marker itself)
    is written as ``b64:`` + base64 of its bytes (``os.fsencode``). :func:`decode_path`
    reverses it exactly."""
    if path.startswith(PATH_MARKER) or any(_unsafe_char(c) for c in path):
        return PATH_MARKER + base64.b64encode(os.fsencode(path)).decode("ascii")
    return path


def decode_path(cell: str) -> str:
    """The path of a table cell written by :func:`encode_path` (a ``str`` as ``os.fsdecode``
    gives it, so ``open()`` works on it)."""
    if cell.startswith(PATH_MARKER):
        try:
            return os.fsdecode(base64.b64decode(cell[len(PATH_MARKER):], validate=True))
        except (binascii.Error, ValueError):
            return cell  # not ours: a literal path that happens to start with the marker
    return cell


def safe_text(msg: str) -> str:
    """``msg`` on one line with control characters and undecodable bytes escaped
    (``\x1b``, ``\r``, ``\udcff`` -> ``\xff``): safe to print to a terminal or to write
    in a table's ``error`` column."""
    s = str(msg)
    if not any(_unsafe_char(c) for c in s):
        return s
    out = []
    for c in s:
        o = ord(c)
        if c in "\n\r\t":
            out.append({"\n": "\\n", "\r": "\\r", "\t": "\\t"}[c])
        elif 0xDC80 <= o <= 0xDCFF:
            out.append(f"\\x{o - 0xDC00:02x}")
        elif _unsafe_char(c):
            out.append(f"\\x{o:02x}" if o < 0x100 else f"\\u{o:04x}")
        else:
            out.append(c)
    return "".join(out)


def one_line(msg: str) -> str:
    """One line (whitespace runs -> one space), other control characters escaped."""
    return safe_text(" ".join(str(msg).split()))


def csv_cell(text: str) -> str:
    """A text cell for CSV: a leading ``'`` when it starts like a formula."""
    return "'" + text if text.startswith(CSV_FORMULA_CHARS) else text


def csv_uncell(text: str) -> str:
    return text[1:] if text.startswith("'") else text
