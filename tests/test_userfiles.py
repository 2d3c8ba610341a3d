"""Group membership from the school's MIS export (CSV): precedence, and every bad row named by file and line."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aupguard.config import userfiles
from aupguard.config.loader import load_policy
from aupguard.config.policy import PolicyError
from aupguard.core.identify import identify
from policy_cases import BASE, line_of, write

WITH_FILES = BASE.replace(
    "  networks:\n",
    "  user_files:\n    - {path: exports/mis.csv, user_column: Login, group_column: Filter group}\n  networks:\n",
    1,
)
GOOD_CSV = (
    "\ufeffUPN,Login,Filter group,Form\r\n"  # Excel writes a BOM and CRLF
    "a@example,A.Pupil,visitors,7A\r\n"
    "\r\n"
    "h@example,head.teacher,visitors,\r\n"  # also in identity.users, which wins
    "t@example,Ms.Teacher,staff,\r\n"
    'q@example,"quoted, name",staff,\r\n'
)


def school(tmp_path: Path, csv_text: str | bytes = GOOD_CSV, policy: str = WITH_FILES) -> Path:
    (tmp_path / "exports").mkdir(exist_ok=True)
    target = tmp_path / "exports" / "mis.csv"
    target.write_bytes(csv_text if isinstance(csv_text, bytes) else csv_text.encode())
    return write(tmp_path, policy)


def test_membership_precedence(tmp_path):
    policy = load_policy(school(tmp_path))
    assert policy.user_files[0].path == tmp_path / "exports" / "mis.csv"  # relative to the policy's folder
    # 1. identity.users beats the MIS file
    head = identify(policy, "Head.Teacher", "10.20.5.1")
    assert head.group == "staff" and "identity.users" in head.why
    # 2. the MIS file beats address ranges (10.20.5.0/24 is visitors, 10.20.0.0/16 staff)
    teacher = identify(policy, "MS.TEACHER", "10.20.5.1")
    assert teacher.group == "staff"
    assert teacher.why == f"user 'MS.TEACHER' is listed at {tmp_path / 'exports' / 'mis.csv'}:5 (identity.user_files)"
    assert identify(policy, "a.pupil", "10.20.1.1").group == "visitors"
    assert identify(policy, "quoted, name", "192.0.2.1").group == "staff"
    # 3. an unlisted user falls through to the address, then 4. the default group
    stranger = identify(policy, "stranger", "10.20.1.1")
    assert stranger.group == "staff" and "not listed in identity.users or user_files" in stranger.why
    assert identify(policy, "stranger", "192.0.2.1").group == "pupils"
    assert policy.files == (policy.path, tmp_path / "exports" / "mis.csv")  # both are watched for reload


BROKEN = [
    ("unknown-group", "Login,Filter group\nann,pupils\nbob,Year 7\n", 3, r"^unknown group 'Year 7' \(the policy has no such group\)"),
    ("no-column", "Username,Group\nann,pupils\n", 1, r"^no column 'Login' in the header row \(columns: Username, Group\)"),
    ("no-group", "Login,Filter group\nann,pupils\nbob,\n", 3, r"^no 'Filter group' for user 'bob'"),
    ("short-row", "Login,Filter group\nann,pupils\nbob\n", 3, r"^no 'Filter group' for user 'bob'"),
    ("no-user", "Login,Filter group\n ,pupils\n", 2, r"^no 'Login' on this row"),
    ("twice", "Login,Filter group\nann,pupils\nx,staff\nANN,staff\n", 4, r"^user 'ANN' is listed twice \(first at .*mis.csv:2; usernames are compared ignoring case\)"),
    ("empty", "", None, r"^the file is empty"),
    ("not-utf8", b"Login,Filter group\nann,pupils\nb\xf6b,staff\n", 3, r"^not UTF-8 text"),
    ("bad-csv", 'Login,Filter group\nann,pupils\n"bob,staff\n', 3, r"^not valid CSV"),
    ("long-name", "Login,Filter group\n" + "x" * 300 + ",pupils\n", 2, r"longer than 256 characters"),
]  # fmt: skip


@pytest.mark.parametrize(("content", "line", "reason"), [c[1:] for c in BROKEN], ids=[c[0] for c in BROKEN])
def test_a_bad_export_names_its_file_and_line(tmp_path, content, line, reason):
    path = school(tmp_path, content)
    with pytest.raises(PolicyError) as caught:
        load_policy(path)
    error = caught.value
    assert (error.file, error.line) == (str(tmp_path / "exports" / "mis.csv"), line), error.reason
    assert re.search(reason, error.reason), error.reason
    assert error.reason.endswith(f"(identity.user_files in {path}:{line_of(WITH_FILES, '- {path: exports')})")


def test_a_missing_export_is_an_error(tmp_path):
    path = write(tmp_path, WITH_FILES)
    with pytest.raises(PolicyError, match="cannot read the user file"):
        load_policy(path)


def test_an_oversized_export_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(userfiles, "MAX_USER_FILE_BYTES", 64)
    with pytest.raises(PolicyError, match="larger than"):
        load_policy(school(tmp_path, "Login,Filter group\n" + "someone,pupils\n" * 10))


def test_too_many_rows_are_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(userfiles, "MAX_USER_ROWS", 3)
    rows = "".join(f"user{n},pupils\n" for n in range(4))
    with pytest.raises(PolicyError, match="more than 3 users") as caught:
        load_policy(school(tmp_path, "Login,Filter group\n" + rows))
    assert caught.value.line == 5


def test_a_user_in_two_exports_is_an_error(tmp_path):
    second = WITH_FILES.replace(
        "  networks:\n",
        "    - {path: exports/staff.csv, user_column: Login, group_column: Filter group}\n  networks:\n",
        1,
    )
    path = school(tmp_path, policy=second)
    (tmp_path / "exports" / "staff.csv").write_text("Login,Filter group\nother,staff\nms.teacher,staff\n")
    with pytest.raises(PolicyError) as caught:
        load_policy(path)
    assert (caught.value.file, caught.value.line) == (str(tmp_path / "exports" / "staff.csv"), 3)
    assert re.search(r"user 'ms.teacher' is also listed at .*mis.csv:5", caught.value.reason)


def test_default_column_names(tmp_path):
    text = BASE.replace("  networks:\n", "  user_files:\n    - {path: exports/mis.csv}\n  networks:\n", 1)
    policy = load_policy(school(tmp_path, "username,group\nann,visitors\n", policy=text))
    assert identify(policy, "ann", "192.0.2.1").group == "visitors"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=200) | st.text(st.characters(codec="utf-8"), max_size=200).map(str.encode))
def test_any_export_gives_a_policy_or_a_policy_error(tmp_path, content):
    path = school(tmp_path, b"Login,Filter group\n" + content)
    try:
        policy = load_policy(path)
    except PolicyError as error:
        assert error.reason and error.file.endswith("mis.csv")
    else:
        assert all(member.group in policy.groups for member in policy.members.values())
