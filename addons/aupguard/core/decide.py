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

from aupguard.base.vocabulary import FILTER_ERROR, NOT_IN_WALLED_GARDEN, severity_rank
from aupguard.config.policy import Policy
from aupguard.core.classify import Classification, Match
from aupguard.core.exemption import Exemption
from aupguard.core.identify import Identity


@dataclass(frozen=True, slots=True)
class Decision:
    action: str  # "allow" | "block"
    category: str | None  # the category the block page explains (most severe blocked one)
    severity: str | None
    blocked_by: tuple[Match, ...]  # matches of categories the group blocks
    allowed_by: tuple[Match, ...]  # allow-side matches that overrode them
    why: str
    # The exemption or classroom override (exemption.Exemption) that made this decision, if one did.
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
