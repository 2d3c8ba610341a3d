"""One error family: every error aupguard explains to a person is an AupguardError, and one found in a file
reads `file:line: reason`; each class keeps the base its callers catch it by."""

from __future__ import annotations

import pytest

from aupguard.base.errors import AupguardError, LocatedError
from aupguard.base.urlnorm import URLError
from aupguard.config.policy import PolicyError
from aupguard.config.userfiles import UserFileError
from aupguard.core.exemption import ExemptionError
from aupguard.lists.index import IndexFormatError
from aupguard.lists.model import ListError
from aupguard.offline.importers import NarrowedRule
from aupguard.report.output import OutputError
from aupguard.store.incidents import SchemaError


@pytest.mark.parametrize(
    ("error", "old_base"),
    [
        (PolicyError, Exception),
        (UserFileError, ValueError),
        (ListError, ValueError),
        (NarrowedRule, ValueError),
        (IndexFormatError, ValueError),
        (URLError, ValueError),
        (ExemptionError, ValueError),
        (OutputError, ValueError),
        (SchemaError, RuntimeError),
    ],
)
def test_every_error_is_an_aupguard_error_and_keeps_its_base(error, old_base):
    assert issubclass(error, AupguardError)
    assert issubclass(error, old_base)


@pytest.mark.parametrize("error", [PolicyError, UserFileError])
def test_an_error_in_a_file_reads_file_line_reason(error):
    located = error("config/policy.yaml", 12, "unknown key 'grups'")
    assert isinstance(located, LocatedError)
    assert str(located) == "config/policy.yaml:12: unknown key 'grups'"
    assert (located.file, located.line, located.reason) == ("config/policy.yaml", 12, "unknown key 'grups'")
    assert str(error("mis.csv", None, "the file is empty")) == "mis.csv: the file is empty"
