"""Decide: given who is asking and what the URL is, allow or block.

A URL is blocked when any of its categories is blocked for the group in the
timetable window in force, unless one of its categories is on the group's allow
side (the school's local allow list); the most severe blocked category is the
one the block page explains. Mandatory categories are blocked whatever allows
them; a walled-garden group is blocked from everything its allow side lacks.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from aupguard.base.urlnorm import normalize_url
from aupguard.base.vocabulary import FILTER_ERROR, NOT_IN_WALLED_GARDEN, severity_rank
from aupguard.config.policy import Policy
from aupguard.core.classify import Classification, Classifier, Match
from aupguard.core.identify import Identity
from aupguard.lists.folders import Problems, domain_key, one_site, read_entries, url_key

if TYPE_CHECKING:
    from aupguard.core.exemptions import Exemption

# Allow-list lines looked up by `overridden_allows`: a local allow list is short; a big list
# mapped onto an allow category is not read to its end at every load.
MAX_ALLOW_ENTRIES_CHECKED = 20_000


@dataclass(frozen=True, slots=True)
class Decision:
    action: str  # "allow" | "block"
    category: str | None  # the category the block page explains (most severe blocked one)
    severity: str | None
    blocked_by: tuple[Match, ...]  # matches of categories the group blocks
    allowed_by: tuple[Match, ...]  # allow-side matches that overrode them
    why: str
    # The exemption or classroom override (exemptions.Exemption) that made this decision, if one did.
    exemption: Exemption | None = None
    window: str | None = None  # the timetable window in force when it was decided

    @property
    def blocked(self) -> bool:
        return self.action == "block"

    @property
    def rule(self) -> str:
        """The rule shown in the incident: the first match of the deciding category, or the override that blocked."""
        fallback = self.exemption.describe() if self.exemption is not None else ""
        if not self.blocked_by:  # most decisions: nothing to search
            return fallback
        return next((m.describe() for m in self.blocked_by if m.category == self.category), fallback)


def decide(
    policy: Policy, identity: Identity, classification: Classification, when: datetime | None = None
) -> Decision:
    """`when` is the request's time (now if None): it chooses the timetable window, and so the group's blocks."""
    group = policy.groups[identity.group]
    window = policy.timetable.window_at(when or datetime.now(UTC))
    blocks, mandatory = group.blocks(window), policy.mandatory
    matches = classification.matches
    blocked_by = tuple(m for m in matches if m.category in blocks or m.category in mandatory)
    allowed_by = tuple(m for m in matches if m.category in group.allow)
    during = f" during {window}" if window else ""
    if allowed_by:
        forced = tuple(m for m in blocked_by if m.category in mandatory)
        if not forced:
            why = f"allowed for group {group.name} by {allowed_by[0].describe()}"
            return Decision("allow", None, None, blocked_by, allowed_by, why, window=window)
        blocked_by = forced  # an allow overrides any block but the mandatory tier
    if not blocked_by:
        if group.walled_garden:
            why = f"group {group.name} is a walled garden and no allow category matched"
            severity = policy.categories[NOT_IN_WALLED_GARDEN].severity
            return Decision("block", NOT_IN_WALLED_GARDEN, severity, (), (), why, window=window)
        why = f"no category blocked for group {group.name}{during}"
        return Decision("allow", None, None, (), allowed_by, why, window=window)
    worst = max(blocked_by, key=lambda m: severity_rank(policy.categories[m.category].severity))
    if worst.category in mandatory:
        why = f"category {worst.category} is mandatory: blocked for everyone"
    else:
        why = f"category {worst.category} is blocked for group {group.name}{during}"
    severity = policy.categories[worst.category].severity
    return Decision("block", worst.category, severity, blocked_by, (), why, window=window)


def filter_error(policy: Policy, identity: Identity) -> Decision:
    """What a request gets when aupguard itself failed while deciding it."""
    group = policy.groups.get(identity.group)
    if group is not None and not group.fail_closed:
        return Decision("allow", None, None, (), (), f"filter error; group {group.name} fails open")
    return Decision(
        "block",
        FILTER_ERROR,
        policy.categories[FILTER_ERROR].severity,
        (),
        (),
        "filter error; failing closed",
    )


def overridden_allows(policy: Policy, classifier: Classifier) -> list[str]:
    """Allow-list entries the policy is refused for, as "file:line: ..." messages.

    A `domains` entry that names no one site (`com`, `co.uk`) would allow every site
    under it; an entry in a mandatory category would be blocked whatever allows it.
    A policy whose allow lists hold either is refused at load (Engine.from_policy_file)
    rather than silently applied or not applied.
    Cheap: only the allow categories' own `domains` and `urls` files are read, and
    each entry is looked up once in the classifier (no scan of the block lists).
    """
    allow = frozenset().union(*(group.allow for group in policy.groups.values()))
    if not allow:
        return []
    warnings: list[str] = []
    checked = 0
    for source in classifier.lookup.sources:
        if source.category not in allow:
            continue
        for kind in ("domains", "urls"):
            if kind in source.skip:
                continue
            path = source.path / kind
            for number, entry in read_entries(path, Problems(), strip_comments=True):
                try:
                    key = domain_key(entry) if kind == "domains" else None  # a urls key only when looked up
                except ValueError:
                    continue  # the list loader reports the line
                if key is not None:
                    try:
                        one_site(key)
                    except ValueError as exc:
                        warnings.append(f"{path}:{number}: allow entry {entry!r} ({source.category}): {exc}")
                        continue
                checked += 1
                if not policy.mandatory or checked > MAX_ALLOW_ENTRIES_CHECKED:
                    continue
                try:
                    key = key if key is not None else url_key(entry)
                    bracketed = f"[{key}]" if kind == "domains" and ":" in key else key  # an IPv6 address
                    url = normalize_url(f"http://{bracketed}")
                except ValueError:
                    continue  # the list loader reports the line
                forced = sorted({m.category for m in classifier.matches(url) if m.category in policy.mandatory})
                if forced:
                    warnings.append(
                        f"{path}:{number}: allow entry {entry!r} ({source.category}) is in the mandatory category "
                        f"{', '.join(forced)}, which nothing may allow: remove the entry"
                    )
    return warnings
