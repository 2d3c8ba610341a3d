"""Output shared by every command: escaping untrusted text for terminals and spreadsheets, and private output files."""

from __future__ import annotations

import contextlib
import io
import os
import re
import stat
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from rich.text import Text

from aupguard.base.errors import AupguardError
from aupguard.store.db import private_parent

STDOUT = "-"  # as an output path: standard output


# Cells starting with these are formulas to Excel/LibreOffice/Sheets (OWASP CSV injection).
_FORMULA_TRIGGERS = frozenset("=+-@\t\r")


# C0/C1 controls and DEL (terminal escapes), bidi marks, embeddings, overrides and isolates, line
# separators and lone surrogates: shown as escapes by `visible`.
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069\ud800-\udfff]")


_SHORT_ESCAPES = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def visible(value: object) -> str:
    """`value` as text a terminal or viewer shows rather than obeys (None is "").

    Every C0 and C1 control, DEL, bidi mark, embedding, override and isolate, line
    separator and lone surrogate becomes a visible escape: tab, newline and carriage
    return as `\\t`, `\\n`, `\\r`; others up to U+00FF as `\\xNN` (ESC is `\\x1b`),
    the rest as `\\uNNNN` (RIGHT-TO-LEFT OVERRIDE is `\\u202e`). Other text, backslashes
    included, is unchanged, so a DOMAIN\\user name reads as typed; the one ambiguity is
    text that itself spelt such an escape.
    """
    text = "" if value is None else str(value)
    return _UNPRINTABLE.sub(_escape, text)


def safe_cell(value: object) -> str:
    """`value` as a CSV cell: `visible`, and a leading "'" when a spreadsheet could run it as a formula."""
    text = visible(value)
    if text[:1] in _FORMULA_TRIGGERS:
        return "'" + text
    return text


def _printable(value: object) -> Text:
    """A table cell: never markup, and control characters shown as escapes rather than obeyed."""
    return Text(visible(value))


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    return _SHORT_ESCAPES.get(char) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


class OutputError(AupguardError, ValueError):
    """An output path that must not be written: it exists and is not a regular file."""


def check_output(path: Path | str) -> None:
    """Raise OutputError when `path` (not "-") exists and is not a regular file.

    The file is written by renaming a new one over it, which would replace a
    symlink (/dev/stdout), a device (/dev/null as root), a FIFO or a socket with
    a regular file: each is refused instead. Called before anything is written.
    """
    if str(path) == STDOUT:
        return
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISREG(mode):
        kind = "a symbolic link" if stat.S_ISLNK(mode) else "a directory" if stat.S_ISDIR(mode) else "a special file"
        raise OutputError(f"{path} is {kind}, not a regular file; name a new or regular file, or - for standard output")


@contextlib.contextmanager
def private_text_file(path: Path | str, encoding: str = "utf-8") -> Iterator[TextIO]:
    """Write the text file `path`, mode 0600, atomically: readers see the old file or the whole new one.

    The data goes to a 0600 temporary file beside `path` that replaces it when the
    block ends without an exception; on an exception it is removed. A missing
    directory is created 0700. `path` "-" is standard output (in `encoding`); an
    existing `path` that is not a regular file raises OutputError (check_output).
    """
    if str(path) == STDOUT:
        stdout = io.TextIOWrapper(sys.stdout.buffer, encoding=encoding, newline="", write_through=True)
        try:
            yield stdout
            stdout.flush()
        finally:
            stdout.detach()  # standard output stays open for whoever writes next
        return
    check_output(path)
    path = Path(path)
    private_parent(path)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")  # 0600
    try:
        os.fchmod(fd, 0o600)  # mkstemp's promise, made explicit: the mode is the point
        with open(fd, "w", encoding=encoding, newline="") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
