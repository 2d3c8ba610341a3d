"""base/files.py: the one atomic file replace, and the folder swap the list importers use."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from aupguard.base import files
from aupguard.base.files import atomic_write, atomic_write_text, staged_dir, temporary_file


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("mode", [0o600, 0o644, 0o400])
def test_atomic_write_gives_the_mode_asked_whatever_the_umask(tmp_path, mode):
    target = tmp_path / "out.txt"
    old_umask = os.umask(0o077)
    try:
        with atomic_write(target, mode) as out:
            out.write(b"new\n")
    finally:
        os.umask(old_umask)
    assert target.read_bytes() == b"new\n"
    assert mode_of(target) == mode
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_a_failed_atomic_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old\n")
    with pytest.raises(RuntimeError, match="half-way"), atomic_write_text(target) as out:
        out.write("new, but only half\n")
        raise RuntimeError("stopped half-way")
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_atomic_write_fsyncs_the_file_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    real_fsync = os.fsync
    seen = []

    def recording_fsync(fd):
        seen.append(("folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file", target.read_bytes()))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    with atomic_write(target) as out:
        out.write(b"new")
    assert seen == [("file", b"old"), ("folder", b"new")]


def test_text_is_written_with_the_newline_asked(tmp_path):
    target = tmp_path / "out.csv"
    with atomic_write_text(target, newline="") as out:
        out.write("a\r\nb\n")
    assert target.read_bytes() == b"a\r\nb\n"


def test_temporary_file_is_removed_but_a_link_to_it_stays(tmp_path):
    with temporary_file(tmp_path, ".key.", 0o600) as (fd, temporary):
        os.write(fd, b"secret")
        os.link(temporary, tmp_path / "key")
        assert mode_of(temporary) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["key"]
    assert (tmp_path / "key").read_bytes() == b"secret"


def test_staged_dir_replaces_the_folder_only_when_complete(tmp_path):
    dest = tmp_path / "lists"
    (dest / "adult").mkdir(parents=True)
    (dest / "adult" / "domains").write_text("old.test\n")
    with pytest.raises(RuntimeError), staged_dir(dest) as staging:
        (staging / "adult").mkdir()
        raise RuntimeError("import failed")
    assert (dest / "adult" / "domains").read_text() == "old.test\n"
    assert [p.name for p in tmp_path.iterdir()] == ["lists"]

    with staged_dir(dest) as staging:
        (staging / "games").mkdir()
        (staging / "games" / "domains").write_text("new.test\n")
        assert not (dest / "games").exists()  # nothing shows before the block ends
    assert [p.name for p in dest.iterdir()] == ["games"]
    assert mode_of(dest) == 0o755
    assert [p.name for p in tmp_path.iterdir()] == ["lists"]


def test_a_failed_folder_swap_puts_the_old_folder_back(tmp_path, monkeypatch):
    dest, staging = tmp_path / "lists", tmp_path / "staging"
    dest.mkdir()
    (dest / "kept").write_text("old")
    staging.mkdir()
    real_rename = os.rename

    def failing_rename(src, dst):
        if Path(src) == staging:
            raise OSError(28, "No space left on device")
        real_rename(src, dst)

    monkeypatch.setattr(files.os, "rename", failing_rename)
    with pytest.raises(OSError, match="No space"):
        files.replace_dir(staging, dest)
    assert (dest / "kept").read_text() == "old"
