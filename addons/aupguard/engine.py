"""The decision core: identify -> classify -> decide for one request, as plain Python.

The mitmproxy addon and `aupguard classify` both call `Engine.check`, so what
the command line says about a URL is what the proxy does with it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from .classify import Classification, Classifier
from .decide import Decision, decide, filter_error
from .identify import Identity, identify
from .incidents import Incident, new_ref
from .lists import load_lists
from .policy import Policy, load_policy
from .urlnorm import NormalizedURL, normalize_url, search_term

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Verdict:
    identity: Identity
    url: NormalizedURL | None
    classification: Classification | None
    decision: Decision
    error: str | None = None  # set when aupguard itself failed and the group's failure rule decided

    @property
    def blocked(self) -> bool:
        return self.decision.blocked

    @property
    def categories(self) -> tuple[str, ...]:
        """Every category matched, the deciding one first (the incident's primary category)."""
        matched = self.classification.categories if self.classification else ()
        return tuple(dict.fromkeys(c for c in (self.decision.category, *matched) if c))


class Engine:
    def __init__(self, policy: Policy, classifier: Classifier):
        self.policy = policy
        self.classifier = classifier

    @classmethod
    def from_policy_file(cls, path: Path) -> Engine:
        """Load a policy and the lists it names. Raises PolicyError or ListError: nothing starts on a bad policy."""
        policy = load_policy(path)
        lists = load_lists(policy.lists)
        for problem in lists.problems[:20]:
            log.warning("list line skipped: %s", problem)
        return cls(policy, Classifier(lists))

    def identify(self, user: str | None, client_ip: str) -> Identity:
        try:
            return identify(self.policy, user, client_ip)
        except Exception:
            log.exception("identifying %r at %r failed; using the default group", user, client_ip)
            return Identity(user, client_ip, self.policy.default_group, "identification failed: default group")

    def check(self, url: str | NormalizedURL, identity: Identity) -> Verdict:
        """Decide one URL for one identity. Never raises: an internal error follows the group's failure rule."""
        normalized = url if isinstance(url, NormalizedURL) else None
        try:
            normalized = normalized or normalize_url(url)
            classification = self.classifier.classify(normalized)
            return Verdict(identity, normalized, classification, decide(self.policy, identity, classification))
        except Exception as exc:
            log.exception("deciding %r for %s failed", str(url)[:200], identity.group)
            return self.failed(identity, normalized, f"{type(exc).__name__}: {exc}")

    def failed(self, identity: Identity, url: NormalizedURL | None, error: str) -> Verdict:
        """The verdict when aupguard itself failed: the group's failure rule decides."""
        return Verdict(identity, url, None, filter_error(self.policy, identity), error)

    def check_host(self, host: str, port: int, identity: Identity) -> Verdict:
        """Decide a connection known only by host (CONNECT target or TLS SNI)."""
        scheme = "http" if port == 80 else "https"
        return self.check(f"{scheme}://{_bracket(host)}:{port}/", identity)

    def incident(
        self,
        verdict: Verdict,
        *,
        method: str,
        user_agent: str | None,
        action: str,
        when: datetime | None = None,
    ) -> Incident:
        """The record of one blocked attempt: what the IT report and the DSL export are made of."""
        when = when or datetime.now(timezone.utc)
        local = when.astimezone(self.policy.timezone)
        url = verdict.url
        return Incident(
            ref=new_ref(),
            ts_utc=when,
            local_date=local.strftime("%Y-%m-%d"),
            local_time=local.strftime("%H:%M:%S"),
            client_ip=verdict.identity.client_ip,
            username=verdict.identity.user,
            group=verdict.identity.group,
            method=method,
            url=url.url if url else "",
            host=url.host if url else "",
            categories=verdict.categories,
            rule=verdict.decision.rule or (verdict.error or ""),
            action=action,
            severity=verdict.decision.severity or "low",
            user_agent=user_agent,
            search_term=search_term(url) if url else None,
        )


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host
