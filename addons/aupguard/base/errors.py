"""One family of errors: every problem aupguard reports to a person is an AupguardError.

The command line catches AupguardError once and prints it as one line (exit 1); the proxy logs it
and keeps serving what it had. A problem found in a file is a LocatedError and reads
`file:line: reason`, the form editors and `grep -n` use, so a technician can jump to the line.
"""

from __future__ import annotations

import os


class AupguardError(Exception):
    """A problem aupguard explains in plain words (the message is the whole explanation)."""


class LocatedError(AupguardError):
    """A problem in a file, at a line when there is one: printed `file:line: reason`."""

    def __init__(self, file: str | os.PathLike[str], line: int | None, reason: str):
        self.file = str(file)
        self.line = line  # 1-based; None when the problem is the whole file
        self.reason = reason
        super().__init__(str(self))

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return f"{where}: {self.reason}"
