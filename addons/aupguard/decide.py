"""Decide: given who is asking and what the URL is, allow or block.

A URL is blocked when any of its categories is blocked for the group, unless
one of its categories is on the group's allow side (the school's local allow
list); the most severe blocked category is the one the block page explains.
"""

from __future__ import annotations

from dataclasses import dataclass

from .classify import Classification, Match
from .identify import Identity
from .policy import Policy, severity_rank


@dataclass(frozen=True, slots=True)
class Decision:
    action: str  # "allow" | "block"
    category: str | None  # the category the block page explains (most severe blocked one)
    severity: str | None
    blocked_by: tuple[Match, ...]  # matches of categories the group blocks
    allowed_by: tuple[Match, ...]  # allow-side matches that overrode them
    why: str

    @property
    def blocked(self) -> bool:
        return self.action == "block"

    @property
    def rule(self) -> str:
        """The list rule shown in the incident: the first match of the deciding category."""
        return next((m.describe() for m in self.blocked_by if m.category == self.category), "")


def decide(policy: Policy, identity: Identity, classification: Classification) -> Decision:
    group = policy.groups[identity.group]
    blocked_by = tuple(m for m in classification.matches if m.category in group.block)
    allowed_by = tuple(m for m in classification.matches if m.category in group.allow)
    if not blocked_by:
        return Decision("allow", None, None, (), allowed_by, f"no category blocked for group {group.name}")
    if allowed_by:
        return Decision(
            "allow", None, None, blocked_by, allowed_by, f"allowed for group {group.name} by {allowed_by[0].describe()}"
        )
    worst = max(blocked_by, key=lambda m: severity_rank(policy.categories[m.category].severity))
    return Decision(
        "block",
        worst.category,
        policy.categories[worst.category].severity,
        blocked_by,
        (),
        f"category {worst.category} is blocked for group {group.name}",
    )


def filter_error(policy: Policy, identity: Identity) -> Decision:
    """What a request gets when aupguard itself failed while deciding it."""
    group = policy.groups.get(identity.group)
    if group is not None and not group.fail_closed:
        return Decision("allow", None, None, (), (), f"filter error; group {group.name} fails open")
    return Decision(
        "block",
        "filter_error",
        policy.categories["filter_error"].severity,
        (),
        (),
        "filter error; failing closed",
    )
