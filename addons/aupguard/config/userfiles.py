"""Identify: the user -> group files a school exports from its MIS (CSV), read when the policy is.

Every cell is untrusted: the file must be UTF-8 CSV with a header row naming
the two columns, at most MAX_USER_FILE_BYTES and MAX_USER_ROWS rows; a group
the policy does not define, a missing cell or a user listed twice stops the
load with the file and line, as a policy mistake does.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Container
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from aupguard.base.errors import LocatedError

MAX_USER_FILE_BYTES = 16 << 20  # ~40 bytes a row: far more than any school's roll
MAX_USER_ROWS = 200_000
MAX_CELL_CHARS = 256


class UserFileError(LocatedError, ValueError):
    """A user file that cannot be used: `file:line: reason`. Still a ValueError, for callers that catch one."""


@dataclass(frozen=True, slots=True)
class UserFile:
    path: Path
    user_column: str
    group_column: str


class Member(NamedTuple):
    group: str
    file: Path
    line: int

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"


def read_user_file(spec: UserFile, groups: Container[str]) -> dict[str, Member]:
    """Casefolded username -> its group and line. Raises UserFileError naming the file and line."""
    path = spec.path
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_USER_FILE_BYTES + 1)
    except OSError as exc:
        raise UserFileError(path, None, f"cannot read the user file: {exc.strerror or exc}") from exc
    if len(data) > MAX_USER_FILE_BYTES:
        raise UserFileError(path, None, f"larger than {MAX_USER_FILE_BYTES >> 20} MiB; not a user -> group export")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise UserFileError(path, line, "not UTF-8 text (export the CSV as UTF-8)") from exc
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader, None)
        if header is None:
            raise UserFileError(path, None, "the file is empty (a header row naming the columns is needed)")
        names = [cell.strip() for cell in header]
        columns = []
        for column in (spec.user_column, spec.group_column):
            if column not in names:
                raise UserFileError(path, 1, f"no column {column!r} in the header row (columns: {', '.join(names)})")
            columns.append(names.index(column))
        user_at, group_at = columns
        members: dict[str, Member] = {}
        for row in reader:
            line = reader.line_num
            if not any(cell.strip() for cell in row):
                continue  # blank line
            if len(members) >= MAX_USER_ROWS:
                raise UserFileError(path, line, f"more than {MAX_USER_ROWS} users")
            user = row[user_at].strip() if user_at < len(row) else ""
            group = row[group_at].strip() if group_at < len(row) else ""
            if not user:
                raise UserFileError(path, line, f"no {spec.user_column!r} on this row")
            if not group:
                raise UserFileError(path, line, f"no {spec.group_column!r} for user {user[:MAX_CELL_CHARS]!r}")
            if len(user) > MAX_CELL_CHARS:
                raise UserFileError(path, line, f"a username longer than {MAX_CELL_CHARS} characters")
            if group not in groups:
                shown = group[:MAX_CELL_CHARS]
                raise UserFileError(path, line, f"unknown group {shown!r} (the policy has no such group)")
            folded = user.casefold()
            if folded in members:
                raise UserFileError(
                    path,
                    line,
                    f"user {user!r} is listed twice (first at {members[folded].where}; "
                    "usernames are compared ignoring case)",
                )
            members[folded] = Member(group, path, line)
    except csv.Error as exc:
        raise UserFileError(path, reader.line_num, f"not valid CSV: {exc}") from exc
    return members
