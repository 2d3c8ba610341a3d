"""Serving the compiled index: the proxy maps a validated private copy that nothing else writes.

`serve_index` copies a published index (one whose SHA-256 `record_publication` noted)
into a 0700 folder under AUPGUARD_DATA, as a 0400 file named by its digest that every
worker shares, validates that copy and maps it; old copies are pruned.
"""

from __future__ import annotations

import hashlib
import os
import stat
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from aupguard.base import paths
from aupguard.base.files import fsync_dir, temporary_file
from aupguard.base.paths import private_dir
from aupguard.lists.index import (
    _VERIFY_CHUNK,
    HEADER_SIZE,
    CompiledIndex,
    IndexFormatError,
    Signature,
    file_signature,
    map_valid,
    read_header,
    roots_fingerprint,
)
from aupguard.lists.model import ListRoot

KEEP_SERVED = 2  # private copies kept in the served folder: the one in service and the one before
KEEP_PUBLISHED = 64  # digests of recent publications kept (empty files): an older compile copied back is still taken
_ABANDONED_COPY_S = 3600  # a partial copy this old was left by a killed process: deleted


def served_dir() -> Path:
    """The private folder of the copies the proxy serves (0700, files 0400), outside the index's own folder."""
    return paths.DATA_DIR / "served-index"


def published_dir() -> Path:
    """The private folder where the writer records the SHA-256 of each index it publishes."""
    return paths.DATA_DIR / "published-index"


def record_publication(digest: str) -> None:
    """Note `digest` as published (an empty 0400 file named by it); keep the KEEP_PUBLISHED newest."""
    folder = private_dir(published_dir())
    mark = folder / digest
    mark.touch(mode=0o400)
    os.utime(mark)  # published again: the newest
    fsync_dir(folder)
    _delete_all_but_newest(folder.iterdir(), KEEP_PUBLISHED)


def _delete_all_but_newest(files: Iterable[Path], keep: int, spare: Path | None = None) -> None:
    """Delete all but the `keep` most recently modified of `files`, and never `spare`."""
    for old in sorted(files, key=_mtime, reverse=True)[keep:]:
        if old != spare:
            old.unlink(missing_ok=True)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:  # removed meanwhile (by another worker or compile): the oldest
        return 0.0


def serve_index(path: Path, store: Path | None = None) -> CompiledIndex:
    """The index at `path`, served from a validated private copy that nothing else writes.

    Whatever is later done to `path` (written over in place, zeroed, truncated) cannot
    reach the copy, so it can neither change a lookup nor SIGBUS the reader. The copy is
    named by its SHA-256 in `store` (default `served_dir()`): every proxy worker maps the
    same file, sharing its pages. Raises IndexFormatError when the file is not a valid
    index (checked before anything is copied into service), changed while copied, or is
    not one the writer published (`published_dir`).
    """
    path = Path(path)
    store = private_dir(Path(store) if store is not None else served_dir())
    # O_NONBLOCK: a FIFO put at the path must not hang the watcher (or the start) waiting for a writer.
    with open(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb") as source:
        src = source.fileno()
        st = os.fstat(src)
        if not stat.S_ISREG(st.st_mode):
            raise IndexFormatError(f"{path}: not a regular file")
        signature = file_signature(st)
        read_header(os.pread(src, HEADER_SIZE, 0), st.st_size, path)  # garbage is refused before any copying
        with temporary_file(store, ".copy-") as (fd, tmp):
            digest = _copy(src, fd)
            if file_signature(os.fstat(src)) != signature:
                raise IndexFormatError(f"{path}: changed while it was being copied")
            if not (published_dir() / digest).is_file():
                raise IndexFormatError(f"{path}: not an index that `aupguard lists compile` published here")
            os.fchmod(fd, 0o400)
            index = map_valid(fd, path, path, signature)  # the very inode mapped is the one validated
            served = store / f"{digest}.idx"
            try:
                os.link(tmp, served)
            except FileExistsError:
                # Another worker (or an earlier start) made this copy: map that one so the workers share
                # its pages, unless it does not validate (a copy cut short by a crash): then ours replaces it.
                try:
                    shared = _open_served(served, path, signature)
                except (IndexFormatError, OSError):
                    os.replace(tmp, served)
                else:
                    index.close()
                    index = shared
    index.path = served
    os.utime(served)  # the newest copy, whichever worker made it
    _prune(store, served)
    return index


def _open_served(served: Path, origin: Path, signature: Signature) -> CompiledIndex:
    with open(served, "rb") as f:
        return map_valid(f.fileno(), served, origin, signature)


def _copy(src: int, dst: int) -> str:
    """Copy the file `src` to `dst`; its SHA-256 (hex)."""
    digest = hashlib.sha256()
    position = 0
    while chunk := os.pread(src, _VERIFY_CHUNK, position):
        digest.update(chunk)
        view = memoryview(chunk)
        while view:
            view = view[os.write(dst, view) :]
        position += len(chunk)
    return digest.hexdigest()


def _prune(store: Path, serving: Path) -> None:
    """Delete all but the KEEP_SERVED newest copies (a reader keeps its mapping of a deleted one),
    and partial copies a killed process left behind."""
    _delete_all_but_newest(store.glob("*.idx"), KEEP_SERVED, spare=serving)
    abandoned = time.time() - _ABANDONED_COPY_S
    for partial in store.glob(".copy-*.tmp"):
        if _mtime(partial) < abandoned:
            partial.unlink(missing_ok=True)


def serve_for(roots: Sequence[ListRoot], path: Path, store: Path | None = None) -> CompiledIndex:
    """`serve_index`, refusing an index compiled for other list folders than `roots`."""
    index = serve_index(path, store)
    if index.roots != roots_fingerprint(roots):
        index.close()
        raise IndexFormatError(f"{path}: compiled for other list folders or mappings than the policy's")
    return index
