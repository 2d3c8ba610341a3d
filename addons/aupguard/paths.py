"""Where aupguard finds its bundled files and keeps its data.

aupguard runs from its checkout (installed with `pip install -e .`), so the
bundled policy and lists sit beside the package. AUPGUARD_HOME points
elsewhere (a packaged install, or tests); AUPGUARD_DATA moves the writable data.
"""

from __future__ import annotations

import os
from pathlib import Path

HOME = Path(os.environ.get("AUPGUARD_HOME") or Path(__file__).resolve().parents[2])
CONFIG_DIR = HOME / "config"
BUNDLED_LISTS = HOME / "blocklists"
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
