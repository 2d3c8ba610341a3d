"""Decide: the active exemptions and classroom overrides (`core.exemption`), applied to a decision.

They end by themselves at their `until` time: evaluation compares `until > now`, so no job has
to expire them. None of them ever lets through a mandatory category.

The proxy never reads the store per request: proxy/watch.py's `ExemptionRefresh` reloads an
immutable `ExemptionSet` off the event loop when the database changed
(PRAGMA data_version), and the request path only probes its dicts.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import replace
from datetime import datetime

from aupguard.base.addresses import AddressTable, Network
from aupguard.base.urlnorm import NormalizedURL
from aupguard.base.vocabulary import CLASSROOM_LOCK
from aupguard.config.policy import Policy
from aupguard.core.classify import Classification
from aupguard.core.decide import Decision
from aupguard.core.exemption import ALLOW_ONLY, BLOCK_ALL, EXEMPTION, Exemption
from aupguard.core.identify import Identity, client_address

log = logging.getLogger(__name__)


# -- the in-memory snapshot the proxy decides with ---------------------------------------------------


class ExemptionSet:
    """The active exemptions and overrides, indexed by who they cover. Immutable once built."""

    def __init__(self, items: Iterable[Exemption] = ()):
        self.items = _usable(items)
        self._by_user: dict[str, list[Exemption]] = {}
        self._by_group: dict[str, list[Exemption]] = {}
        by_network: list[tuple[Network, Exemption]] = []
        for item in self.items:
            if item.user is not None:
                self._by_user.setdefault(item.user, []).append(item)
            elif item.group is not None:
                self._by_group.setdefault(item.group, []).append(item)
            elif item.network is not None:
                by_network.append((item.network, item))
        self._by_network = AddressTable(by_network)
        self._any_network = bool(self._by_network)

    def __bool__(self) -> bool:
        return bool(self.items)

    def for_identity(self, identity: Identity, when: datetime) -> tuple[Exemption, ...]:
        """Every exemption and override covering `identity` that is active at `when`: a few dict probes."""
        if not self.items:
            return ()
        found: list[Exemption] = []
        if identity.user:
            found += self._by_user.get(identity.user.casefold(), ())
        found += self._by_group.get(identity.group, ())
        if self._any_network:
            address = client_address(identity.client_ip)
            if address is not None:
                found += self._by_network.covering(address)
        return tuple(item for item in found if item.active(when))

    def active_for(self, identity: Identity, url: NormalizedURL, when: datetime) -> tuple[Exemption, ...]:
        """What `aupguard explain` lists as considered: every active item for `identity` that concerns `url`.

        Category exemptions are listed whatever the URL's categories (whether they apply is the decision's job).
        """
        return tuple(
            item
            for item in self.for_identity(identity, when)
            if item.kind != EXEMPTION or item.category is not None or item.covers_site(url)
        )

    def apply(
        self, policy: Policy, identity: Identity, classification: Classification, decision: Decision, when: datetime
    ) -> Decision:
        """`decision` as the active overrides and exemptions change it; never lets a mandatory category through.

        A classroom override beats an individual exemption (an exam is an exam): "block all" blocks
        everything, "allow only" blocks every site it does not list and lets the listed ones through
        as an exemption would. An exemption lets a blocked request through when it names the site
        (or a parent domain), or when category exemptions cover every category that blocked it.
        """
        items = self.for_identity(identity, when)
        if not items:
            return decision
        url = classification.url
        lock = next((item for item in items if item.kind == BLOCK_ALL), None)
        if lock is None:
            allow_only = [item for item in items if item.kind == ALLOW_ONLY]
            if allow_only:
                listed = next((item for item in allow_only if item.covers_site(url)), None)
                if listed is None:
                    lock = allow_only[0]
                else:
                    return _allowed(policy, decision, listed)
        if lock is not None:
            if decision.blocked and _mandatory(policy, decision):
                return decision  # the mandatory category is the truer reason to show and report
            return Decision(
                "block",
                CLASSROOM_LOCK,
                policy.categories[CLASSROOM_LOCK].severity,
                decision.blocked_by,
                (),
                f"blocked by {lock.describe()}",
                exemption=lock,
            )
        exemptions = [item for item in items if item.kind == EXEMPTION]
        by_site = next((item for item in exemptions if item.covers_site(url)), None)
        if by_site is not None:
            return _allowed(policy, decision, by_site)
        blocked = {match.category for match in decision.blocked_by}
        by_category = [item for item in exemptions if item.category in blocked]
        if by_category and blocked <= {item.category for item in by_category}:
            return _allowed(policy, decision, by_category[0])
        return decision


def _usable(items: Iterable[Exemption]) -> tuple[Exemption, ...]:
    """`items` without the sites that name no one site, with one warning for all of them.

    A store written before `add` refused public suffixes may hold `--site com`: that
    exemption is dropped (never a whole TLD let through); an allow-only override keeps
    its lock and its other sites, so the room stays locked rather than opened.
    """
    usable, refused = [], []
    for item in items:
        bad = item.refused_sites() if item.sites else {}
        if bad:
            refused.append(f"#{item.id} {', '.join(f'{site!r} ({why})' for site, why in bad.items())}")
            if item.kind != ALLOW_ONLY:
                continue
            item = replace(item, sites=tuple(site for site in item.sites if site not in bad))
        usable.append(item)
    if refused:
        log.warning("stored exemption sites refused, not applied: %s", "; ".join(refused))
    return tuple(usable)


def _mandatory(policy: Policy, decision: Decision) -> bool:
    return any(policy.categories[match.category].mandatory for match in decision.blocked_by)


def _exemptable(policy: Policy, decision: Decision) -> bool:
    return all(policy.categories[match.category].exemptable for match in decision.blocked_by)


def _allowed(policy: Policy, decision: Decision, item: Exemption) -> Decision:
    """`decision` turned into an allow by `item`, unless it is not a list block an exemption may lift."""
    # Only blocks made by list matches are lifted: a filter error or a mandatory category stays blocked.
    if not decision.blocked or not decision.blocked_by or not _exemptable(policy, decision):
        return decision
    return replace(
        decision,
        action="allow",
        category=None,
        severity=None,
        why=f"allowed by {item.describe()}",
        exemption=item,
    )


# -- the store --------------------------------------------------------------------------------------


# -- keeping a running proxy up to date --------------------------------------------------------------
