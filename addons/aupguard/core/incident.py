"""Record: one incident (a blocked or flagged request) as the core describes it, and the rule that raises repeats."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from aupguard.base.vocabulary import SEVERITIES

ACTIONS = ("block", "refuse", "allow")


# Crockford-like: 32 symbols (5 bits each) without 0/O and 1/I, which pupils and IT confuse.
_REF_ALPHABET = "23456789ABCDEFGHJKLMNPQRSTUVWXYZ"


@dataclass(slots=True)
class Incident:
    """One recorded attempt. Not to be changed after it is submitted to a writer."""

    ref: str  # what the block page shows, see new_ref()
    ts_utc: datetime  # tz-aware; normalised to UTC
    local_date: str  # 'YYYY-MM-DD', school local time
    local_time: str  # 'HH:MM:SS', school local time
    client_ip: str
    username: str | None
    group: str
    method: str
    url: str
    host: str
    categories: tuple[str, ...]  # the deciding (primary) category first
    rule: str
    action: str  # 'block' | 'refuse' | 'allow'
    severity: str  # 'low' | 'medium' | 'high' | 'critical'
    user_agent: str | None
    search_term: str | None
    technique: str | None = None  # circumvention technique, e.g. "nested-url" or "doh"
    inner_url: str | None = None  # the URL hidden inside a web-proxy URL

    def __post_init__(self) -> None:
        if self.ts_utc.tzinfo is None or self.ts_utc.utcoffset() is None:
            raise ValueError("Incident.ts_utc must be timezone-aware")
        if self.action not in ACTIONS:
            raise ValueError(f"Incident.action must be one of {ACTIONS}, not {self.action!r}")
        if self.severity not in SEVERITIES:
            raise ValueError(f"Incident.severity must be one of {SEVERITIES}, not {self.severity!r}")
        self.ts_utc = self.ts_utc.astimezone(UTC)
        self.categories = tuple(self.categories)


@dataclass(frozen=True, slots=True)
class RepeatRule:
    """Repeated attempts: the `threshold`th incident in `category` within `window`, counting this one, by one
    user (or, for a request without one, one client address) is recorded with at least `severity`.

    The writer counts in the database when it records, so the attempts every
    proxy worker recorded count, and a policy reload loses nothing.
    """

    category: str
    window: timedelta
    threshold: int
    severity: str = "high"


def new_ref() -> str:
    """A random incident reference a pupil can read out to IT, e.g. "AG-7F3K-2Q9M" (40 bits)."""
    bits = secrets.randbits(40)
    chars = "".join(_REF_ALPHABET[(bits >> shift) & 31] for shift in range(0, 40, 5))
    return f"AG-{chars[:4]}-{chars[4:]}"
