"""The decision core: identify -> classify -> decide for one request, as plain Python.

The mitmproxy addon and `aupguard classify` both call `Engine.check`, so what
the command line says about a URL is what the proxy does with it.

Circumvention is part of every check: `circumvention.inspect_request` adds
signature, heuristic and DoH matches to the URL's list matches, and every URL
carried inside it (a nested finding, or a web proxy's decoded target) is
classified too; the stricter decision wins. A blocked attempt to get round the
filter carries its `technique`, and its incident is filed under its deciding
category and `circumvention` both.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import NamedTuple

from aupguard.base.urlnorm import NormalizedURL, URLError, from_parts, normalize_url, search_term
from aupguard.base.vocabulary import (
    CIRCUMVENTION,
    CIRCUMVENTION_LIST_CATEGORIES,
    CIRCUMVENTION_SEVERITY,
    FILTER_ERROR,
    severity_rank,
)
from aupguard.config.policy import Policy
from aupguard.core import circumvention
from aupguard.core.classify import Classification, Classifier, Match
from aupguard.core.decide import Decision, decide, filter_error
from aupguard.core.exemptions import ExemptionSet
from aupguard.core.identify import Identity, identify
from aupguard.core.incident import Incident, RepeatRule, new_ref

log = logging.getLogger(__name__)

# Which matches a circumvention finding becomes: (category, source).
_FINDING_MATCHES = {
    "signature": ("anonymizers", "aupguard/signatures"),
    "heuristic": ("anonymizers", "aupguard/heuristic"),
    "doh": ("doh", "aupguard/doh"),
}
MAX_INNER_URLS = 4  # carried URLs classified per request (inspect_url bounds their depth)
MALFORMED = "malformed"  # the technique of a request naming its destination in a form no host has
MAX_ASKED_SHOWN = 200  # characters of an unreadable destination kept in the incident's rule


@dataclass(frozen=True, slots=True)
class CarriedURL:
    """A URL carried inside the request (a nested URL, or a web proxy's target), as `check` decided it."""

    url: str
    classification: Classification | None  # None: not a URL (then it decided nothing)
    decision: Decision | None


class Verdict(NamedTuple):  # a NamedTuple for speed: see classify.Match
    identity: Identity
    url: NormalizedURL | None
    classification: Classification | None
    decision: Decision
    error: str | None = None  # set when aupguard itself failed and the group's failure rule decided
    technique: str | None = (
        None  # blocked as a circumvention attempt: list|signature|nested|heuristic|doh|tunnel|malformed
    )
    inner_url: str | None = None  # the URL carried inside `url` (nested URL or a web proxy's target)
    # When `url` carried other URLs: its own decision (`decision` is the strictest of it and
    # theirs) and each carried URL's, so `aupguard explain` shows what check used, no second opinion.
    own_decision: Decision | None = None
    carried: tuple[CarriedURL, ...] = ()

    @property
    def blocked(self) -> bool:
        return self.decision.blocked

    @property
    def categories(self) -> tuple[str, ...]:
        """Every category matched, the deciding one first (the incident's primary category)."""
        first = self.decision.category
        if self.classification is None or not self.classification.matches:  # most requests: no list matched
            return (first,) if first else ()
        return tuple(dict.fromkeys(c for c in (first, *self.classification.categories) if c))


@dataclass(frozen=True, slots=True, eq=False)
class Engine:
    """The policy, its classifier and the active exemptions: everything a decision needs, immutable
    (but for a cache of decisions that depend on the policy alone).

    A reload, a recompiled index or a change of exemptions makes a new Engine (`replace`), which
    the proxy installs in one assignment: a request sees the old engine or the new, never a mix.
    `runtime.load_engine` builds one from the files.
    """

    policy: Policy
    classifier: Classifier
    exemptions: ExemptionSet = field(default_factory=ExemptionSet)
    # Most URLs match no list: their decision depends only on the group and the timetable window,
    # so it is made once per pair. It depends on the policy alone, so `replace` shares the cache.
    _unmatched: dict[tuple[str, str | None], Decision] = field(default_factory=dict, repr=False)

    def replace(self, *, classifier: Classifier | None = None, exemptions: ExemptionSet | None = None) -> Engine:
        """This engine with another classifier (a recompiled index) or other exemptions."""
        return Engine(
            self.policy,
            self.classifier if classifier is None else classifier,
            self.exemptions if exemptions is None else exemptions,
            self._unmatched,
        )

    @property
    def repeat_rule(self) -> RepeatRule:
        """Repeated circumvention attempts become "high": the incident writer applies it as it records,
        counting in the shared database, so every worker's attempts count and a reload forgets none."""
        rules = self.policy.circumvention
        return RepeatRule(CIRCUMVENTION, timedelta(minutes=rules.repeat_window_minutes), rules.repeat_threshold)

    def identify(self, user: str | None, client_ip: str) -> Identity:
        try:
            return identify(self.policy, user, client_ip)
        except Exception:
            log.exception("identifying %r at %r failed; using the default group", user, client_ip)
            return Identity(user, client_ip, self.policy.default_group, "identification failed: default group")

    def check(
        self,
        url: str | NormalizedURL,
        identity: Identity,
        *,
        method: str = "GET",
        content_type: str | None = None,
        accept: str | None = None,
        when: datetime | None = None,
    ) -> Verdict:
        """Decide one request for one identity. Never raises: an internal error follows the group's failure rule.

        The proxy passes the request's method, Content-Type and Accept (DNS over
        HTTPS is recognised by them); `aupguard classify` knows only the URL.
        `when` (default now) chooses the timetable window and the exemptions in force.
        """
        normalized = url if isinstance(url, NormalizedURL) else None
        when = when or datetime.now(UTC)
        if normalized is None:
            try:
                normalized = normalize_url(url)  # type: ignore[arg-type]
            except URLError as exc:  # bad input, not an internal error: refused for every group
                return self.malformed(identity, None, str(url), str(exc))
        try:
            listed = self.classifier.matches(normalized)
            findings = circumvention.inspect_request(normalized, method, content_type, accept)
            if not findings:  # the common case: nothing to add, no carried URL to decide
                classification = Classification(normalized, tuple(listed))
                outer = self._decide(identity, classification, when)
                technique = _technique(outer, outer, None)
                return Verdict(identity, normalized, classification, outer, None, technique, None, outer)
            classification = Classification(normalized, (*listed, *_finding_matches(findings)))
            outer = self._decide(identity, classification, when)
            decision, deciding_inner = outer, None
            carried = tuple(self._decide_inner(inner_url, identity, when) for inner_url in _inner_urls(findings))
            for inner in carried:
                if inner.decision is not None and _stricter(inner.decision, decision):
                    decision, deciding_inner = inner.decision, inner.url
            technique = _technique(outer, decision, deciding_inner)
            inner_url = deciding_inner or next((f.inner_url for f in findings if f.inner_url), None)
            return Verdict(
                identity, normalized, classification, decision, None, technique, inner_url if technique else None,
                outer, carried,
            )  # fmt: skip
        except Exception as exc:
            log.exception("deciding %r for %s failed", str(url)[:200], identity.group)
            return self.failed(identity, normalized, f"{type(exc).__name__}: {exc}", when)

    def _decide_inner(self, inner_url: str, identity: Identity, when: datetime) -> CarriedURL:
        """The list decision for a carried URL (its own findings are already among the outer URL's)."""
        try:
            inner = normalize_url(inner_url)
        except URLError:
            return CarriedURL(inner_url, None, None)
        classification = self.classifier.classify(inner)
        return CarriedURL(inner_url, classification, self._decide(identity, classification, when))

    def _decide(self, identity: Identity, classification: Classification, when: datetime | None = None) -> Decision:
        """The policy's decision, as the active exemptions and classroom overrides change it."""
        when = when or datetime.now(UTC)
        if classification.matches:
            decision = decide(self.policy, identity, classification, when)
        else:
            key = (identity.group, self.policy.timetable.window_at(when))
            cached = self._unmatched.get(key)
            if cached is None:
                cached = self._unmatched[key] = decide(self.policy, identity, classification, when)
            decision = cached
        if not self.exemptions:
            return decision
        return self.exemptions.apply(self.policy, identity, classification, decision, when)

    def check_request(
        self,
        scheme: str,
        names: tuple[str, ...],
        port: int,
        path: str,
        identity: Identity,
        *,
        method: str = "GET",
        content_type: str | None = None,
        accept: str | None = None,
        when: datetime | None = None,
    ) -> Verdict:
        """Decide a request that names its destination more than once: the connection's host (a CONNECT
        target, the absolute URL's), the Host header, the TLS SNI. Each name is checked with the path,
        so a Host header naming another site cannot take the path past `urls` and `expressions`; the
        strictest decision wins. A name that is no host makes the whole request malformed."""
        urls, unreadable = _readable_urls(scheme, names, port, path)
        verdict = _strictest(  # one URL in the common case: every name the same host
            self.check(url, identity, method=method, content_type=content_type, accept=accept, when=when)
            for url in urls
        )
        if unreadable is not None:
            return self.malformed(identity, verdict, unreadable[0], str(unreadable[1]))
        assert verdict is not None, "a request names at least one host"
        return verdict

    def failed_request(
        self, identity: Identity, scheme: str, names: tuple[str, ...], port: int, path: str, error: str
    ) -> Verdict:
        """`failed` for a request or CONNECT that broke in aupguard's hook: the mandatory tier is still
        looked up under every name it gave that can be read, the strictest verdict wins."""
        verdict = _strictest(self.failed(identity, url, error) for url in _readable_urls(scheme, names, port, path)[0])
        return verdict if verdict is not None else self.failed(identity, None, error)

    def malformed(self, identity: Identity, within: Verdict | None, asked: str, why: str) -> Verdict:
        """A request (or CONNECT, or SNI) whose destination cannot be read as a host: refused for
        every group, as an attempt to get round the filter. `within` is the verdict on the names that
        could be read: its URL is recorded and, when it blocks, its category is carried."""
        entry = f"{asked[:MAX_ASKED_SHOWN]!r}: {why[:MAX_ASKED_SHOWN]}"
        match = Match(CIRCUMVENTION, MALFORMED, entry, "aupguard/request")
        url = within.url if within is not None else None
        listed = within.classification.matches if within is not None and within.classification else ()
        if within is not None and within.blocked:
            decision = within.decision
        else:
            severity = self.policy.categories[CIRCUMVENTION].severity
            decision = Decision(
                "block", CIRCUMVENTION, severity, (match,), (), f"malformed destination; group {identity.group}"
            )
        classification = Classification(url, (*listed, match)) if url is not None else None
        return Verdict(identity, url, classification, decision, technique=MALFORMED)

    def failed(
        self, identity: Identity, url: NormalizedURL | None, error: str, when: datetime | None = None
    ) -> Verdict:
        """The verdict when aupguard itself failed: the group's failure rule decides, but never for the
        mandatory tier, which is looked up again for a known URL; if even that fails, everyone is blocked."""
        decision = filter_error(self.policy, identity)
        if decision.blocked or url is None or not self.policy.mandatory:
            return Verdict(identity, url, None, decision, error)
        try:
            forced = tuple(m for m in self.classifier.matches(url) if m.category in self.policy.mandatory)
        except Exception:
            log.exception("the mandatory tier for %r could not be checked: blocked for everyone", url.url[:200])
            return Verdict(identity, url, None, _mandatory_unchecked(self.policy, identity), error)
        if not forced:
            return Verdict(identity, url, None, decision, error)
        classification = Classification(url, forced)
        return Verdict(identity, url, classification, decide(self.policy, identity, classification, when), error)

    def check_host(self, host: str, port: int, identity: Identity, when: datetime | None = None) -> Verdict:
        """Decide a connection known only by host (CONNECT target or TLS SNI)."""
        return self.check(_host_url(host, port), identity, when=when)

    def check_connect(self, host: str, port: int, identity: Identity, when: datetime | None = None) -> Verdict:
        """Decide a CONNECT: its port, then the host's lists, then whether it names an IP address."""
        rules = self.policy.circumvention
        if port not in rules.connect_ports:
            allowed = ", ".join(str(p) for p in sorted(rules.connect_ports))
            return self.tunnel(host, port, identity, f"port {port}", f"CONNECT to port {port} (allowed: {allowed})")
        verdict = self.check_host(host, port, identity, when)
        # The normalised host decides, as list lookups see it: 2130706433, 0x7f.1, 127.1 and
        # 127.0.0.1. all name 127.0.0.1. A target that does not normalise is no name either.
        names_host = verdict.url is not None and not verdict.url.is_ip
        if verdict.blocked or identity.group in rules.bare_ip_allowed or names_host:
            return verdict
        return self.tunnel(host, port, identity, "bare-ip", f"CONNECT to the IP address {host}, not a name")

    def tunnel(self, host: str, port: int, identity: Identity, entry: str, why: str) -> Verdict:
        """A tunnel blocked as circumvention (a refused port, bare IP, no SNI, or no TLS at all)."""
        severity = self.policy.categories[CIRCUMVENTION].severity
        match = Match(CIRCUMVENTION, "tunnel", entry, "aupguard/tunnel")
        decision = Decision("block", CIRCUMVENTION, severity, (match,), (), f"{why}; group {identity.group}")
        try:
            url = normalize_url(_host_url(host, port))
        except URLError:
            url = None
        return Verdict(identity, url, Classification(url, (match,)) if url else None, decision, technique="tunnel")

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
        when = when or datetime.now(UTC)
        local_date, local_time = local_date_time(when, self.policy.timezone)
        url = verdict.url
        categories = verdict.categories
        severity = verdict.decision.severity or "low"
        if verdict.technique:
            # Both what it carried (the deciding category, first: what the block page said, so an adult
            # site in a web proxy is counted as adult) and that it was an attempt to get round the filter.
            carried = (
                inner.decision.category for inner in verdict.carried
                if inner.decision is not None and inner.decision.blocked and inner.decision.category
            )  # fmt: skip
            categories = tuple(dict.fromkeys((*categories[:1], CIRCUMVENTION, *carried, *categories[1:])))
            severity = max(severity, CIRCUMVENTION_SEVERITY, key=severity_rank)  # repeats: see repeat_rule
        return Incident(
            ref=new_ref(),
            ts_utc=when,
            local_date=local_date,
            local_time=local_time,
            client_ip=verdict.identity.client_ip,
            username=verdict.identity.user,
            group=verdict.identity.group,
            method=method,
            url=url.url if url else "",
            host=url.host if url else "",
            categories=categories,
            rule=verdict.decision.rule or (verdict.error or ""),
            action=action,
            severity=severity,
            user_agent=user_agent,
            search_term=search_term(url) if url else None,
            technique=verdict.technique,
            inner_url=verdict.inner_url,
        )


def local_date_time(when: datetime, zone) -> tuple[str, str]:
    """`when` (tz-aware) as ('YYYY-MM-DD', 'HH:MM:SS') in `zone`: the time zone work is done once a
    minute (_local_minute), not for every incident."""
    whole = math.floor(when.timestamp())
    minute = _local_minute(whole // 60, zone)
    if minute is None:
        local = when.astimezone(zone)
        return local.strftime("%Y-%m-%d"), local.strftime("%H:%M:%S")
    return minute[0], f"{minute[1]}:{whole % 60:02d}"


@lru_cache(maxsize=8)
def _local_minute(minute: int, zone) -> tuple[str, str] | None:
    """The local date and 'HH:MM' of one UTC minute; None when the zone's offset then was not whole
    minutes (old local mean times), as a local minute then does not start with the UTC one."""
    local = datetime.fromtimestamp(minute * 60, zone)
    if (local.utcoffset() or timedelta()).total_seconds() % 60:
        return None
    return local.strftime("%Y-%m-%d"), local.strftime("%H:%M")


def _mandatory_unchecked(policy: Policy, identity: Identity) -> Decision:
    """The filter error decision for a group that fails open, when the mandatory tier could not be checked."""
    severity = policy.categories[FILTER_ERROR].severity
    return Decision("block", FILTER_ERROR, severity, (), (), f"mandatory tier unchecked; group {identity.group}")


def _finding_matches(findings: tuple[circumvention.Finding, ...]) -> list[Match]:
    """Signature, heuristic and DoH findings as matches; nested ones are decided by their inner URL."""
    matches = []
    for finding in findings:
        target = _FINDING_MATCHES.get(finding.technique)
        if target is not None:
            category, source = target
            matches.append(Match(category, finding.technique, finding.name, source))
    return matches


def _inner_urls(findings: tuple[circumvention.Finding, ...]) -> list[str]:
    return list(dict.fromkeys(f.inner_url for f in findings if f.inner_url))[:MAX_INNER_URLS]


def _stricter(candidate: Decision, current: Decision) -> bool:
    """Whether `candidate` is stricter: a block beats an allow, then the more severe block wins."""
    if not candidate.blocked:
        return False
    if not current.blocked:
        return True
    return severity_rank(candidate.severity or "low") > severity_rank(current.severity or "low")


def _technique(outer: Decision, decision: Decision, deciding_inner: str | None) -> str | None:
    """How a blocked request tried to get round the filter; None when it is no circumvention attempt."""
    if not decision.blocked:
        return None
    found = {m.kind for m in outer.blocked_by} if outer.blocked else set()
    for technique in ("signature", "doh", "heuristic"):
        if technique in found:
            return technique
    if deciding_inner is not None:
        return "nested"
    if any(m.category in CIRCUMVENTION_LIST_CATEGORIES for m in decision.blocked_by):
        return "list"
    return None


def _strictest(verdicts: Iterable[Verdict]) -> Verdict | None:
    """The verdict whose decision is strictest (the first of equals); None for none."""
    strictest: Verdict | None = None
    for verdict in verdicts:
        if strictest is None or _stricter(verdict.decision, strictest.decision):
            strictest = verdict
    return strictest


def _readable_urls(
    scheme: str, names: tuple[str, ...], port: int, path: str
) -> tuple[tuple[NormalizedURL, ...], tuple[str, URLError] | None]:
    """The distinct URLs that `names` (each with the path) make, and the first name that is no host."""
    unreadable: tuple[str, URLError] | None = None
    urls: dict[NormalizedURL, None] = {}
    for name in dict.fromkeys(names):  # most requests name one host two or three times
        try:
            urls[from_parts(scheme, name, port, path)] = None
        except URLError as exc:
            unreadable = unreadable or (name, exc)
    return tuple(urls), unreadable


def _host_url(host: str, port: int) -> str:
    scheme = "http" if port == 80 else "https"
    return f"{scheme}://{_bracket(host)}:{port}/"


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host
