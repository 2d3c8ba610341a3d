"""`aupguard lists update ut1`: fetch or take a UT1 tarball, check it, import it, compile, swap.

Every step that can fail happens before anything in service is touched: the
download goes to a temporary file (bounded size, timeout), its SHA-256 is
checked when one is given, the archive is imported into a staging folder
beside the lists, and the policy's lists are compiled with the staging folder
read in place of the UT1 root into a temporary index file. Only then are the
new lists renamed into place and the new index renamed over the old one,
which every running proxy worker picks up within seconds (proxy/watch.py's `IndexSwap`).
A failure at any step leaves the lists and the serving index as they were.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.parse
import urllib.request
from dataclasses import dataclass, replace
from pathlib import Path

from aupguard.base.files import atomic_write, replace_dir, replace_file
from aupguard.base.paths import make_dir
from aupguard.config.policy import Policy
from aupguard.lists.model import ListError
from aupguard.offline.compile import CompileSummary, Progress, compile_from_folders
from aupguard.offline.importers import ImportResult, import_ut1

UT1_URL = "https://dsi.ut-capitole.fr/blacklists/download/blacklists.tar.gz"
MAX_DOWNLOAD_BYTES = 256 << 20  # upstream's tarball is ~20 MB
TIMEOUT_S = 60
UT1_ROOT = "ut1"  # the policy's list root the update replaces


@dataclass(frozen=True)
class UpdateResult:
    imported: ImportResult
    compiled: CompileSummary
    sha256: str


def download(url: str, folder: Path, limit: int = MAX_DOWNLOAD_BYTES, timeout: float = TIMEOUT_S) -> Path:
    """Fetch `url` (http or https) into `folder`/blacklists.tar.gz; raises ListError on any failure.

    The file appears only once the download is complete (`atomic_write`); a failed one leaves nothing.
    """
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise ListError(f"{url[:200]}: only http and https URLs can be fetched")
    target = Path(folder) / "blacklists.tar.gz"
    with atomic_write(target) as out:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                size = 0
                while chunk := response.read(1 << 20):
                    size += len(chunk)
                    if size > limit:
                        raise ListError(f"{url[:200]}: larger than {limit >> 20} MiB; download stopped")
                    out.write(chunk)
        except OSError as exc:  # URLError, HTTPError, timeouts and refused connections
            raise ListError(f"{url[:200]}: download failed: {exc}") from exc
    return target


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def update_ut1(
    policy: Policy,
    index_path: Path,
    *,
    tarball: Path | None = None,
    url: str | None = None,
    sha256: str | None = None,
    progress: Progress | None = None,
) -> UpdateResult:
    """Replace the policy's UT1 lists from `tarball` or `url` and recompile the index; all or nothing."""
    root = next((r for r in policy.lists if r.name == UT1_ROOT), None)
    if root is None:
        raise ListError(f"the policy has no `{UT1_ROOT}` list root to update (see `lists:` in the policy)")
    dest = Path(root.path)
    make_dir(dest.parent)
    index_path = Path(index_path)
    make_dir(index_path.parent)
    work = Path(tempfile.mkdtemp(prefix=f".{dest.name}.update-", dir=dest.parent))
    new_index = index_path.with_name(f".{index_path.name}.update-{os.getpid()}")
    try:
        source = download(url or UT1_URL, work) if tarball is None else Path(tarball)
        digest = sha256_of(source)
        if sha256 and digest != sha256.strip().lower():
            raise ListError(f"{source.name}: SHA-256 is {digest}, expected {sha256.strip().lower()}; not imported")
        staged = work / "lists"
        imported = import_ut1(source, staged)
        compiled = compile_from_folders(policy.lists, new_index, progress, staged={UT1_ROOT: staged})
        replace_dir(staged, dest)
        replace_file(new_index, index_path)
    finally:
        new_index.unlink(missing_ok=True)
        shutil.rmtree(work, ignore_errors=True)
    return UpdateResult(
        ImportResult(dest, imported.categories, imported.origin), replace(compiled, path=index_path), digest
    )
