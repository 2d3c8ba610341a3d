"""Replacing files and folders atomically: readers see the old one or the whole new one, never a part.

Every file aupguard replaces (the compiled index, imported `domains` files, report and export
files, a downloaded tarball) is written through `atomic_write`; every list folder an import
replaces goes through `staged_dir` / `replace_dir`.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, TextIO

from aupguard.base.paths import make_dir


@contextlib.contextmanager
def atomic_write(path: Path, mode: int = 0o600) -> Iterator[BinaryIO]:
    """Write the file `path` (`mode`) in one step: the block writes to a temporary file beside it.

    When the block ends without an exception the temporary file is flushed, fsynced and
    renamed over `path`, and the folder is fsynced, so after a crash `path` is the old file
    or the whole new one. On an exception the temporary file is removed and `path` is untouched.
    The folder must exist.
    """
    path = Path(path)
    with temporary_file(path.parent, f".{path.name}.", mode) as (fd, temporary):
        with open(fd, "wb", closefd=False) as file:
            yield file
            file.flush()
            os.fsync(fd)
        replace_file(temporary, path)


@contextlib.contextmanager
def temporary_file(folder: Path, prefix: str, mode: int = 0o600) -> Iterator[tuple[int, Path]]:
    """A new file `folder`/`prefix`*.tmp (`mode`), open read-write: (descriptor, path).

    When the block ends, however it ends, the descriptor is closed and the file removed
    unless the block renamed it away; a link the block made to it stays.
    """
    fd, name = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=folder)  # 0600 until fchmod
    try:
        os.fchmod(fd, mode)
        yield fd, Path(name)
    finally:
        os.close(fd)
        Path(name).unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_write_text(
    path: Path, mode: int = 0o600, *, encoding: str = "utf-8", newline: str | None = None
) -> Iterator[TextIO]:
    """`atomic_write` for text in `encoding` (`newline` as for `open`)."""
    with atomic_write(path, mode) as file:
        text = io.TextIOWrapper(file, encoding=encoding, newline=newline)
        yield text
        text.flush()
        text.detach()  # the binary file stays open for atomic_write's fsync


def replace_file(source: Path, target: Path) -> None:
    """Rename the complete file `source` over `target` (same folder), then fsync the folder: the rename lasts."""
    os.replace(source, target)
    fsync_dir(target.parent)


def fsync_dir(path: Path) -> None:
    """Make the entries of the folder `path` (files created, renamed or removed in it) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def staged_dir(dest: Path, mode: int = 0o755) -> Iterator[Path]:
    """A new empty folder beside `dest` for the block to fill; when the block ends it becomes `dest`.

    The new folder gets `mode` and replaces `dest` only once the block ended without an
    exception (`replace_dir`); on an exception it is removed and `dest` stays as it was.
    """
    dest = Path(dest)
    make_dir(dest.parent)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.new-", dir=dest.parent))
    try:
        yield staging
        os.chmod(staging, mode)
        replace_dir(staging, dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def replace_dir(staging: Path, dest: Path) -> None:
    """Put the complete `staging` folder at `dest`, keeping the old one until the new one is there."""
    if not (dest.exists() or dest.is_symlink()):
        os.rename(staging, dest)
        return
    old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
    if old.exists():
        shutil.rmtree(old)  # left by an import that died between the renames below
    os.rename(dest, old)
    try:
        os.rename(staging, dest)
    except BaseException:
        os.rename(old, dest)
        raise
    shutil.rmtree(old, ignore_errors=True)
