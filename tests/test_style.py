"""The project's habits, run with the tests (issue 11.7): ruff's lint and format, and mypy, all clean.

The README's test command (which `.ci/run` calls) runs these, so CI fails on a finding as it fails
on a broken test. The tools are the ones installed beside this interpreter by the `[test]` extra;
their configuration is in pyproject.toml.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# The venv's own bin folder; not resolved, since a venv's python is a link to the system's.
TOOLS = Path(sys.executable).parent
CHECKED = ["addons", "tests", "benchmarks"]


def run_tool(name: str, *arguments: str) -> subprocess.CompletedProcess[str]:
    tool = TOOLS / name
    assert tool.is_file(), f"{name} is not installed beside {sys.executable}: pip install -e '.[test]'"
    return subprocess.run([str(tool), *arguments], cwd=REPO, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize(
    "command",
    [
        pytest.param(("ruff", "check", *CHECKED), id="ruff-check"),
        pytest.param(("ruff", "format", "--check", *CHECKED), id="ruff-format"),
        # mypy reads the files to check and its settings from pyproject.toml.
        pytest.param(("mypy",), id="mypy"),
    ],
)
def test_the_tree_is_clean(command):
    done = run_tool(*command)
    assert done.returncode == 0, f"`{' '.join(command)}` found:\n{done.stdout}{done.stderr}"
