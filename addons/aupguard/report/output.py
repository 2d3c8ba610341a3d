"""Output shared by every command: escaping untrusted text, rows as a table, CSV or JSON, and private output files.

Every command that prints rows renders them here, so `--format table|csv|json` means the same everywhere:
- table: for people. On a terminal as wide as it is, and a section too wide for it one block per row
  (as psql's \\x) rather than a column of slivers; into a pipe or a file at whatever width it takes,
  so no value is ever broken across lines (`aupguard exempt list | grep 'Ms Khan'` finds the row).
- csv: one header line, then one line per row; every cell through `safe_cell` (no formula, no control).
- json: one object per line (JSON lines), each a row. `report --format json` alone writes one
  document (its sections by name), as it always has.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
import stat
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from rich.console import Console
from rich.table import Table
from rich.text import Text

from aupguard.base.errors import AupguardError
from aupguard.base.files import atomic_write_text
from aupguard.store.db import private_parent

STDOUT = "-"  # as an output path: standard output
FORMATS = ("table", "csv", "json")
# A table into a pipe or a file is as wide as its widest row needs, up to this (a bound, not a layout).
UNBOUNDED_WIDTH = 1 << 16


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
    with atomic_write_text(path, 0o600, encoding=encoding, newline="") as handle:
        yield handle


# -- rows as a table, CSV or JSON ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Section:
    """Rows with the same columns, e.g. one part of a report or the list of exemptions."""

    name: str
    title: str  # "" for a listing that is its own title
    columns: tuple[str, ...]
    rows: list[dict[str, Any]]


def table_console(file: TextIO | None = None) -> Console:
    """A console for tables on `file` (None: standard output, looked up when printing).

    A terminal keeps its width; anything else (a pipe, a file, a test's capture) gets an unbounded
    one, so a table there never folds a value onto a second line, whatever COLUMNS says.
    """
    console = Console(file=file)
    if console.is_terminal:
        return console
    return Console(file=file, width=UNBOUNDED_WIDTH, no_color=True)


def write_table(section: Section, console: Console) -> None:
    """`section` as a table, or, when that is wider than the console, one block of lines per row.

    Cells are never markup and show control characters as escapes (`visible`). A column of whole
    numbers is right-aligned. In the blocks each field is one soft-wrapped line: a narrow terminal
    wraps it on screen, but the text holds no line break inside a value.
    """
    title = section.title or None
    table = Table(title=title, title_justify="left", min_width=len(section.title) + 4 if title else None)
    for column in section.columns:
        numeric = all(isinstance(row[column], int) and not isinstance(row[column], bool) for row in section.rows)
        table.add_column(column, justify="right" if numeric else "left", overflow="fold")
    for row in section.rows:
        table.add_row(*(_printable(row[column]) for column in section.columns))
    if console.measure(table, options=console.options.update_width(UNBOUNDED_WIDTH)).maximum <= console.width:
        console.print(table)
        return
    if title:
        console.print(Text(title))
    width = max(map(len, section.columns))
    for number, row in enumerate(section.rows, 1):
        console.print(Text(f"[{number}]"))
        for column in section.columns:
            line = Text.assemble(" ", (column.ljust(width), "dim"), "  ", visible(row[column]))
            console.print(line, soft_wrap=True)


def write_csv(columns: Sequence[str], rows: Iterable[Mapping[str, object]], out: TextIO) -> None:
    """A header line of `columns`, then each row's cells in that order (missing ones empty), each `safe_cell`."""
    writer = csv.writer(out)
    writer.writerow(columns)
    for row in rows:
        writer.writerow([safe_cell(row.get(column)) for column in columns])


def write_json_lines(rows: Iterable[Mapping[str, object]], out: TextIO) -> None:
    """One JSON object per row, one per line (JSON's own escapes keep control characters out)."""
    for row in rows:
        out.write(json.dumps(row) + "\n")


def write_rows(section: Section, fmt: str, out: TextIO | None = None, *, empty: str = "none") -> None:
    """A listing in `fmt` (one of FORMATS) on `out` (None: standard output); a table with no rows says `empty`."""
    if fmt == "table":
        console = table_console(out)
        if section.rows:
            write_table(section, console)
        else:
            console.print(Text(empty))
        return
    stream = out if out is not None else sys.stdout
    if fmt == "csv":
        write_csv(section.columns, section.rows, stream)
    elif fmt == "json":
        write_json_lines(section.rows, stream)
    else:
        raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
