"""Where aupguard finds its bundled files and keeps its data.

aupguard runs from its checkout (installed with `pip install -e .`), so the
bundled policy and lists sit beside the package. AUPGUARD_HOME points
elsewhere (a packaged install, or tests); AUPGUARD_DATA moves the writable data.
"""

from __future__ import annotations

import os
from pathlib import Path

HOME = Path(os.environ.get("AUPGUARD_HOME") or Path(__file__).resolve().parents[3])
CONFIG_DIR = HOME / "config"
DEFAULT_POLICY = CONFIG_DIR / "policy.yaml"

# Writable state: incident database, imported lists, compiled index.
DATA_DIR = Path(os.environ.get("AUPGUARD_DATA") or HOME / "var")
DEFAULT_DB = DATA_DIR / "incidents.db"
IMPORTED_LISTS = DATA_DIR / "lists"
# The compiled list index (`aupguard lists compile`), shared read-only by every proxy worker.
DEFAULT_INDEX = DATA_DIR / "index" / "lists.idx"


def private_dir(path: Path) -> Path:
    """Create `path` (and parents) readable by the owner only: it holds pupils' personal data."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)
    return path


def data_dir() -> Path:
    """DATA_DIR, created if missing and made 0700 (also when it exists): the incident log lives in it."""
    return private_dir(DATA_DIR)


def make_dir(path: Path, *, private: bool = False) -> Path:
    """Create the folder `path` and its missing parents; a new `path` is 0700 when `private`.

    Everything that creates anything in DATA_DIR goes through here (or through
    data_dir()), so whichever command runs first (`run`, `lists compile`,
    `lists import`, `update`) makes DATA_DIR itself 0700 before anything else.
    The list and index folders inside it are left 0755: they hold public block
    lists, and nobody but the owner can get past a 0700 DATA_DIR to them.
    An existing `path` outside DATA_DIR is left as it is (it may be /tmp or a home).
    """
    path = Path(path)
    if path.resolve().is_relative_to(DATA_DIR.resolve()):
        data_dir()
    if private and not path.is_dir():
        return private_dir(path)
    path.mkdir(parents=True, exist_ok=True)
    return path
