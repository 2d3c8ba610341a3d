"""Decide: one exemption or classroom override, a time-limited change to the policy, as a record.

An exemption lets a group, a user or an address range reach a site or a
category it would otherwise be blocked from (a game for one lesson, teaching
material the Head has allowed in writing). A classroom override puts one
room's address range into "allow only these sites" or "block all" mode for an
exam or a focused lesson. `core.exemptions` applies the active ones to a decision;
`store.exemptions` keeps them, with the audit trail of every change.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from aupguard.base.addresses import Network
from aupguard.base.errors import AupguardError
from aupguard.base.urlnorm import NormalizedURL
from aupguard.lists.model import one_site

EXEMPTION, ALLOW_ONLY, BLOCK_ALL = "exemption", "allow_only", "block_all"


KINDS = (EXEMPTION, ALLOW_ONLY, BLOCK_ALL)


class ExemptionError(AupguardError, ValueError):
    """An exemption or override that cannot be recorded, with the reason in plain words."""


@dataclass(frozen=True, slots=True)
class Exemption:
    id: int
    kind: str  # one of KINDS
    until: datetime  # UTC; inactive from this moment
    created_at: datetime
    created_by: str
    reason: str
    group: str | None = None
    user: str | None = None  # casefolded, as identify compares users
    network: Network | None = None
    sites: tuple[str, ...] = ()  # normalised domains; each covers its subdomains
    category: str | None = None
    revoked_at: datetime | None = None
    revoked_by: str | None = None
    os_user: str | None = None  # the operating-system account that ran `add` (None: stored before it was recorded)

    def active(self, when: datetime) -> bool:
        return self.revoked_at is None and when < self.until

    def refused_sites(self) -> dict[str, str]:
        """Stored sites that do not name one site (a public suffix recorded before `add` refused them), and why."""
        refused = {}
        for site in self.sites:
            try:
                one_site(site)
            except ValueError as exc:
                refused[site] = str(exc)
        return refused

    def covers_site(self, url: NormalizedURL) -> bool:
        return any(candidate in self.sites for candidate in url.domain_candidates())

    @property
    def who(self) -> str:
        if self.group is not None:
            return f"group {self.group}"
        if self.user is not None:
            return f"user {self.user}"
        return f"addresses {self.network}"

    @property
    def what(self) -> str:
        if self.kind == BLOCK_ALL:
            return "block all"
        sites = ", ".join(self.sites)
        if self.kind == ALLOW_ONLY:
            return f"allow only {sites}"
        return f"category {self.category}" if self.category else f"site {sites}"

    def describe(self) -> str:
        label = "exemption" if self.kind == EXEMPTION else "classroom override"
        until = self.until.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")  # read by people: no microseconds
        return f"{label} #{self.id} ({self.who}: {self.what}; until {until}; by {self.created_by})"
