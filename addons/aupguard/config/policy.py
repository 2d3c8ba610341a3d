"""The policy model: the school's policy (config/policy.yaml) as immutable records.

config/loader.py reads and checks the file (through config/yamlfile.py) and builds a
Policy; everything after it only reads these records.
"""

from __future__ import annotations

import zoneinfo
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from aupguard.base.addresses import AddressTable, Network
from aupguard.base.errors import LocatedError
from aupguard.config.timetable import Timetable
from aupguard.config.userfiles import Member, UserFile
from aupguard.lists.model import ListRoot

DEFAULT_EXEMPTION_MAX_DAYS = 31  # a month: a lesson, a project, a term's half

DEFAULT_CIRCUMVENTION_TEXT = (
    "Trying to get round the school's filter (with web proxies, VPNs, hidden web addresses or other tricks) "
    "is against our Acceptable Use Policy. If you need this page for your work, ask your teacher: they can "
    "ask for it to be checked."
)


class PolicyError(LocatedError):
    """A policy file (or a file it names) that cannot be used: `file:line: reason`."""


@dataclass(frozen=True, slots=True)
class Category:
    name: str
    label: str  # plain words for the block page
    severity: str  # one of SEVERITIES
    reason: str  # why the AUP blocks it, shown on the block page
    no_decrypt: bool  # never TLS-decrypted (banking, health)
    mandatory: bool = False  # blocked for every group, whatever allows, timetables or exemptions say

    @property
    def exemptable(self) -> bool:
        """Whether an exemption may lift a block by this category: every one but the mandatory tier.

        The one rule `exemptions.add` refuses by, `ExemptionSet.apply` lifts by and `exempt --help` states.
        """
        return not self.mandatory


@dataclass(frozen=True, slots=True)
class Group:
    name: str
    description: str
    block: frozenset[str]
    allow: frozenset[str]  # a match in one of these overrides any block (the local allow list)
    fail_closed: bool  # when aupguard itself fails: block (True) or let the request through
    download_block_types: frozenset[str] = frozenset()  # names from DOWNLOAD_TYPES
    max_download_bytes: int | None = None  # None: no size limit
    walled_garden: bool = False  # only pages in an `allow` category may be visited
    allow_during: Mapping[str, frozenset[str]] = field(default_factory=dict)  # window -> blocks lifted then
    block_during: Mapping[str, frozenset[str]] = field(default_factory=dict)  # window -> extra blocks then
    # window -> the whole block set while it is in force, precomputed so a request costs one dict probe
    by_window: Mapping[str, frozenset[str]] = field(default_factory=dict, repr=False, compare=False)

    def blocks(self, window: str | None) -> frozenset[str]:
        """The categories blocked while `window` is in force (None: outside every window)."""
        if window is None:
            return self.block
        return self.by_window.get(window, self.block)


@dataclass(frozen=True, slots=True)
class CircumventionRules:
    """The `circumvention:` section: what a CONNECT tunnel may be, and when attempts count as repeated."""

    connect_ports: frozenset[int] = frozenset({443})
    # Groups whose CONNECTs to a bare IP address / TLS without a server name are allowed; all others are blocked.
    bare_ip_allowed: frozenset[str] = frozenset()
    no_sni_allowed: frozenset[str] = frozenset()
    repeat_window_minutes: int = 10
    repeat_threshold: int = 3  # this many attempts within the window by one user or device: severity high


@dataclass(frozen=True, slots=True)
class NetworkRule:
    network: Network
    group: str


@dataclass(frozen=True)
class Policy:
    path: Path
    school_name: str
    timezone: zoneinfo.ZoneInfo
    it_contact: str
    categories: dict[str, Category]
    groups: dict[str, Group]
    default_group: str
    users: dict[str, str]  # casefolded username -> group
    networks: tuple[NetworkRule, ...]  # most specific first
    lists: tuple[ListRoot, ...]
    tls_intercept: bool
    no_decrypt_categories: frozenset[str]
    no_decrypt_hosts: frozenset[str]  # normalised; each covers its subdomains
    accidental_text: str
    retention_days: int
    circumvention: CircumventionRules = CircumventionRules()
    circumvention_text: str = DEFAULT_CIRCUMVENTION_TEXT  # the block page's note on a circumvention attempt
    exemption_max_days: int = DEFAULT_EXEMPTION_MAX_DAYS  # `exemptions.max_days`: the longest exemption or override
    network_index: AddressTable[NetworkRule] = field(init=False, repr=False, compare=False)  # networks by address
    timetable: Timetable = field(default_factory=Timetable.empty)
    user_files: tuple[UserFile, ...] = ()
    members: Mapping[str, Member] = field(default_factory=dict)  # casefolded username -> group, from user_files
    mandatory: frozenset[str] = field(init=False, repr=False, compare=False)  # blocked for everyone

    def __post_init__(self) -> None:
        object.__setattr__(self, "network_index", AddressTable((rule.network, rule) for rule in self.networks))
        object.__setattr__(self, "mandatory", frozenset(n for n, c in self.categories.items() if c.mandatory))

    @property
    def files(self) -> tuple[Path, ...]:
        """Every file the policy was read from: a change to any of them is a change of policy."""
        return (self.path, *(f.path for f in self.user_files))


# -- reading ------------------------------------------------------------------------------------
