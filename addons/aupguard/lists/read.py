"""Reading list folders into `ListData`, or key by key, within bounds.

One set of per-file readers serves both consumers: `load_lists` (dicts in memory, for
small lists and tests) and `offline.compile.compile_from_folders` (streamed into the
on-disk index). A list file is read 1 MiB at a time and every line is bounded, so a
huge or hostile file costs bounded memory; bad lines go to `Problems`, never fatal.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

from aupguard.base.vocabulary import CATEGORY_NAME
from aupguard.lists.model import ListData, ListError, ListRoot, ListSource, Problems, domain_key, mapped, url_key

log = logging.getLogger(__name__)
MAX_LINE_CHARS = 4096
MAX_LIST_FILE_BYTES = 512 << 20  # upstream's biggest file (adult/domains) is ~110 MB
# A comment after an entry; not applied to expressions, where " #" or "[ #]" can be part of a regex.
_TRAILING_COMMENT = re.compile(r"\s#")


def list_sources(roots: Sequence[ListRoot], problems: Problems) -> list[ListSource]:
    """One `ListSource` per category folder of every root, ids in order. Raises ListError for a missing root."""
    sources: list[ListSource] = []
    for root in roots:
        for folder, category, skip in category_folders(root, problems):
            sources.append(ListSource(len(sources), category, f"{root.name}/{folder.name}", folder, skip))
    return sources


def source_keys(source: ListSource, kind: str, problems: Problems) -> Iterator[str]:
    """The lookup key of each entry of the source's `domains` or `urls` file; bad lines go to `problems`."""
    if kind in source.skip:
        return
    path = source.path / kind
    key_of = domain_key if kind == "domains" else url_key
    # Bare public suffixes are kept here: curated lists block whole namespaces on purpose
    # (the bundled adult list's `xxx` and `porn`, health's `nhs.uk`, UT1's `bet.br`).
    # Third-party lists imported by `aupguard lists import` get no such trust (`one_site`).
    for number, entry in read_entries(path, problems, strip_comments=True):
        try:
            yield key_of(entry)
        except ValueError as exc:  # URLError, or a codec's UnicodeError
            problems.add(f"{path}:{number}", str(exc))


def source_expressions(source: ListSource, problems: Problems) -> Iterator[str]:
    """The patterns of the source's `expressions` file (compiled by the classifier, with RE2)."""
    if "expressions" in source.skip:
        return
    for _number, pattern in read_entries(source.path / "expressions", problems, strip_comments=False):
        yield pattern


def load_lists(roots: Sequence[ListRoot]) -> ListData:
    """Read every category folder of every root. Raises ListError for a missing, non-optional root."""
    problems = Problems()
    sources = list_sources(roots, problems)
    tables: dict[str, dict[str, int]] = {"domains": {}, "urls": {}}
    expressions: list[tuple[int, str]] = []
    for source in sources:
        bit = 1 << source.id
        for kind, table in tables.items():
            for key in source_keys(source, kind, problems):
                table[key] = table.get(key, 0) | bit
        expressions.extend((source.id, pattern) for pattern in source_expressions(source, problems))
    if problems.count:
        log.warning("skipped %d unreadable list lines or files (see ListData.problems)", problems.count)
    return ListData(
        sources=sources,
        domains=tables["domains"],
        urls=tables["urls"],
        expressions=expressions,
        problems=problems.as_list(),
    )


def category_folders(root: ListRoot, problems: Problems) -> list[tuple[Path, str, frozenset[str]]]:
    """(folder, aupguard category, list files not read) for each folder of `root` that counts, in name order."""
    try:
        entries = sorted(os.scandir(root.path), key=lambda entry: entry.name)
    except FileNotFoundError:
        if root.optional:
            return []
        raise ListError(f"{root.path}: list folder {root.name!r} does not exist") from None
    except OSError as exc:
        raise ListError(f"{root.path}: cannot read list folder {root.name!r}: {exc.strerror}") from exc
    folders = []
    for entry in entries:
        # Symlinked folders are UT1's aliases (porn -> adult): loading them would count lists twice.
        if entry.name.startswith(".") or not entry.is_dir(follow_symlinks=False):
            continue
        skip: frozenset[str] = frozenset()
        if root.mapping is not None:
            category, skip = mapped(root.mapping.get(entry.name))
            if category is None:
                continue
        elif CATEGORY_NAME.fullmatch(entry.name):
            category = entry.name
        else:
            problems.add(entry.path, "folder name is not a category name (a-z, 0-9, _); folder skipped")
            continue
        folders.append((Path(entry.path), category, skip))
    return folders


_READ_CHUNK = 1 << 20
_MAX_LINE_BYTES = 4 * MAX_LINE_CHARS  # UTF-8: at most 4 bytes a character


def read_lines(path: Path, problems: Problems) -> Iterator[tuple[int, str]]:
    """(line number, text) of every line of a list file, read 1 MiB at a time; a missing file has none.

    Memory stays bounded whatever the file size (the 120 MB adult list is never one string);
    invalid UTF-8 is replaced, and a line longer than MAX_LINE_CHARS is reported and skipped.
    """
    try:
        file = open(path, "rb")  # noqa: SIM115 - the `with file:` below closes it
    except FileNotFoundError:
        return
    except OSError as exc:
        problems.add_unreadable(path, f"cannot read: {exc.strerror}")
        return
    with file:
        if os.fstat(file.fileno()).st_size > MAX_LIST_FILE_BYTES:
            problems.add_unreadable(path, f"larger than {MAX_LIST_FILE_BYTES >> 20} MiB, not loaded")
            return
        number, tail, size, overlong = 0, b"", 0, False
        while True:
            try:
                chunk = file.read(_READ_CHUNK)
            except OSError as exc:
                problems.add_unreadable(path, f"cannot read: {exc.strerror}")
                return
            size += len(chunk)
            if size > MAX_LIST_FILE_BYTES:  # it grew while being read
                problems.add_unreadable(path, f"larger than {MAX_LIST_FILE_BYTES >> 20} MiB, read no further")
                return
            if not chunk:
                lines = [tail]
            else:
                data = tail + chunk
                cut = data.rfind(b"\n")
                if cut < 0:
                    # No line end in sight: keep at most one overlong line's worth, then skip to its end.
                    tail = data if len(data) <= _MAX_LINE_BYTES else data[: _MAX_LINE_BYTES + 1]
                    overlong = overlong or len(data) > _MAX_LINE_BYTES
                    continue
                lines, tail = data[:cut].split(b"\n"), data[cut + 1 :]
            for raw in lines:
                number += 1
                if overlong or len(raw) > MAX_LINE_CHARS:
                    text = None if overlong else raw.decode("utf-8", errors="replace")
                    overlong = False
                    if text is None or len(text) > MAX_LINE_CHARS:
                        problems.add(f"{path}:{number}", f"line longer than {MAX_LINE_CHARS} characters")
                        continue
                    yield number, text
                else:
                    yield number, raw.decode("utf-8", errors="replace")
            if not chunk:
                return


def read_entries(path: Path, problems: Problems, *, strip_comments: bool) -> Iterator[tuple[int, str]]:
    """(line number, entry) for each entry of a list file: blank lines and `#` comments dropped."""
    for number, line in read_lines(path, problems):
        if strip_comments and "#" in line:
            comment = _TRAILING_COMMENT.search(line)
            if comment:
                line = line[: comment.start()]
        line = line.strip()
        if line and line[0] != "#":
            yield number, line
