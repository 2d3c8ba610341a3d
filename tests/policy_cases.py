"""The broken-policy harness shared by tests of the policy file's sections (policy, timetable, ...).

A case edits one place of a small valid policy; loading it must fail naming the
file, the line of the case's marker and a reason matching the case's pattern.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from aupguard.base.vocabulary import CATEGORIES
from aupguard.config.loader import load_policy
from aupguard.config.policy import PolicyError

# A small valid policy (every category the code knows, three groups, one list root); each broken case edits
# one line of it.
CATEGORY_LINES = "\n".join(
    f"  {name}: {{label: {name} sites, severity: low, reason: Blocked by the AUP}}" for name in CATEGORIES
)
BASE = f"""\
version: 1
school:
  name: Test School
  timezone: Europe/London
  it_contact: it@example.sch.uk
categories:
{CATEGORY_LINES}
groups:
  pupils:
    block: [adult, social_networks]
    allow: [school_allow]
    fail_closed: true
  staff:
    description: Staff
    block: [adult]
    fail_closed: false
  visitors:
    block: [adult, dating]
identity:
  default_group: pupils
  users:
    Head.Teacher: staff
  networks:
    - {{cidr: 10.20.0.0/16, group: staff}}
    - {{cidr: 10.20.5.0/24, group: visitors}}
lists:
  - {{name: local, path: lists}}
tls:
  intercept: true
  no_decrypt: [Example-Bank.CO.UK.]
block_page:
  accidental: It's OK.
records:
  retention_days: 30
"""


def write(tmp_path: Path, text: str, name: str = "policy.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def edit_once(base: str, old: str, new: str) -> str:
    assert base.count(old) == 1, f"the case must edit one place: {old!r}"
    return base.replace(old, new)


def line_of(text: str, marker: str) -> int:
    assert text.count(marker) == 1, f"marker {marker!r} must be unique"
    return text[: text.index(marker)].count("\n") + 1


def assert_refused(tmp_path: Path, text: str, marker: str, reason: str) -> PolicyError:
    """Load `text` as a policy file: it must fail at the line of `marker`, for a reason matching `reason`."""
    path = write(tmp_path, text)
    with pytest.raises(PolicyError) as caught:
        load_policy(path)
    error = caught.value
    assert (error.file, error.line) == (str(path), line_of(text, marker)), error.reason
    assert re.search(reason, error.reason), error.reason
    assert str(error) == f"{path}:{error.line}: {error.reason}"
    return error
