"""Through a running proxy: whatever is done to the index file at the configured path, the proxy
keeps blocking, stays alive and answering, and still takes up a valid `lists compile`."""

from __future__ import annotations

import functools
import os
import re
import subprocess
from pathlib import Path

import pytest

from aupguard.lists.index import HEADER_SIZE
from conftest import aupguard as run_aupguard
from conftest import listening_pids, proxied_status, start_proxy, wait_for, write_policy

ILLEGAL, ADULT = "illegal-feed.test", "www.pornhub.com"


# These tests read the exit status and stderr of the commands themselves.
aupguard = functools.partial(run_aupguard, check=False)


def with_local_lists(tmp_path: Path) -> tuple[Path, Path]:
    """The bundled policy plus a local root listing ILLEGAL in the mandatory `illegal` category."""
    local = tmp_path / "local"
    (local / "illegal").mkdir(parents=True)
    (local / "illegal" / "domains").write_text(f"{ILLEGAL}\n")
    policy = write_policy(
        tmp_path / "policy.yaml",
        lambda d: d["lists"].append({"name": "local", "path": str(local), "optional": True}),
    )
    return policy, local


def write_in_place(path: Path, data: bytes) -> None:
    with open(path, "r+b") as f:  # the same inode, as `cp`, `dd conv=notrunc` or a restore tool write it
        f.write(data)


def compile_to(policy: Path, out: Path, data: Path) -> None:
    done = aupguard("lists", "compile", "--config", str(policy), "--index", str(out), data=data)
    assert done.returncode == 0, done.stderr


def cp_same_lists(tmp_path: Path, index: Path, policy: Path) -> str:
    compile_to(policy, tmp_path / "again.idx", index.parent.parent)  # the same lists, another hash seed
    subprocess.run(["cp", str(tmp_path / "again.idx"), str(index)], check=True)
    return "switched to the recompiled list index"


def cp_other_lists(tmp_path: Path, index: Path, policy: Path) -> str:
    bare = write_policy(
        tmp_path / "bare.yaml",
        lambda d: d.update(lists=[root for root in d["lists"] if root["name"] != "blocklists"]),
    )
    compile_to(bare, tmp_path / "other.idx", index.parent.parent)
    subprocess.run(["cp", str(tmp_path / "other.idx"), str(index)], check=True)
    return "compiled for other list folders"


def cp_compiled_elsewhere(tmp_path: Path, index: Path, policy: Path) -> str:
    # A valid index that this proxy's data folder never published (another machine's, or forged).
    compile_to(policy, tmp_path / "elsewhere.idx", tmp_path / "elsewhere")
    subprocess.run(["cp", str(tmp_path / "elsewhere.idx"), str(index)], check=True)
    return "not an index that `aupguard lists compile` published here"


def zeroes(tmp_path: Path, index: Path, policy: Path) -> str:
    write_in_place(index, bytes(index.stat().st_size))
    return "bad magic"


def random_bytes(tmp_path: Path, index: Path, policy: Path) -> str:
    write_in_place(index, os.urandom(index.stat().st_size))
    return "bad magic"


def truncation(tmp_path: Path, index: Path, policy: Path) -> str:
    os.truncate(index, HEADER_SIZE + 1000)
    return "truncated"


TAMPERING = {
    f.__name__: f for f in (cp_same_lists, cp_other_lists, cp_compiled_elsewhere, zeroes, random_bytes, truncation)
}


@pytest.mark.parametrize("tamper", TAMPERING.values(), ids=TAMPERING.keys())
def test_a_tampered_index_file_never_opens_hangs_or_kills_the_proxy(tmp_path, origin, tamper):
    policy, local = with_local_lists(tmp_path)
    data = tmp_path / "var"
    index = data / "index" / "lists.idx"
    proxy = start_proxy(tmp_path, policy)
    try:
        assert proxied_status(proxy.port, ILLEGAL) == 403 and proxied_status(proxy.port, ADULT) == 403
        said = tamper(tmp_path, index, policy)
        # At once (before the watcher has looked) and after it has judged the new file: still blocking.
        assert proxied_status(proxy.port, ILLEGAL) == 403 and proxied_status(proxy.port, ADULT) == 403
        assert wait_for(lambda: said in proxy.log.read_text()), proxy.log.read_text()[-3000:]
        assert proxied_status(proxy.port, ILLEGAL) == 403 and proxied_status(proxy.port, ADULT) == 403
        assert proxied_status(proxy.port, f"127.0.0.1:{origin.port}") == 200  # alive and answering
        assert proxy.process.poll() is None

        # A real publish is still taken up: a new entry is blocked, on the same running proxy.
        (local / "illegal" / "domains").write_text(f"{ILLEGAL}\nsecond-{ILLEGAL}\n")
        done = aupguard("lists", "compile", "--config", str(policy), data=data)
        assert done.returncode == 0, done.stderr
        assert wait_for(lambda: proxied_status(proxy.port, f"second-{ILLEGAL}") == 403)
        assert proxied_status(proxy.port, ILLEGAL) == 403 and proxied_status(proxy.port, ADULT) == 403
        served = data / "served-index"
        assert served.stat().st_mode & 0o777 == 0o700
        copies = list(served.glob("*.idx"))
        assert 1 <= len(copies) <= 2 and all(p.stat().st_mode & 0o777 == 0o400 for p in copies)
        assert all(re.fullmatch(r"[0-9a-f]{64}\.idx", p.name) for p in copies)
    finally:
        assert proxy.stop() == 0


def test_every_worker_maps_the_same_private_copy_not_the_configured_file(tmp_path):
    proxy = start_proxy(tmp_path, extra=("--workers", "2"))
    try:
        assert proxied_status(proxy.port, ADULT) == 403
        pids = listening_pids(proxy.port)
        assert len(pids) == 2
        mapped = set()
        for pid in pids:
            maps = Path(f"/proc/{pid}/maps").read_text()
            assert "lists.idx" not in maps
            mapped |= set(re.findall(r"\S*/served-index/[0-9a-f]{64}\.idx", maps))
        assert len(mapped) == 1  # one file: the workers share its pages
    finally:
        assert proxy.stop() == 0
