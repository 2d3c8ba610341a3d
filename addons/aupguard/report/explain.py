"""`aupguard explain`: the whole decision for one URL, as the proxy would make it.

It is built from the Verdict of `Engine.check`, the call the proxy makes, so an
explanation can never disagree with what the filter does: the group and why,
every list entry that matched and what the group does with its category, the
URLs carried inside it (a web proxy's target, a nested URL) with their own
matches, the timetable window in force, the exemptions considered, and the final
action. Each match's effect is read from the decision that used it: the URL's
own, or its carried URL's.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from aupguard.config.policy import Policy
from aupguard.core.classify import Classification, Match
from aupguard.core.decide import Decision
from aupguard.core.engine import Engine
from aupguard.core.identify import Identity
from aupguard.report.output import visible


def explain(engine: Engine, url: str, identity: Identity, when: datetime) -> dict[str, Any]:
    """The decision for `url` as plain data (JSON-ready); `when` must be timezone-aware."""
    verdict = engine.check(url, identity, when=when)
    policy = engine.policy
    decision = verdict.decision
    group = policy.groups.get(identity.group)
    local = when.astimezone(policy.timezone)
    considered = engine.exemptions.active_for(identity, verdict.url, when) if verdict.url else ()
    own = verdict.own_decision or decision
    # The carried URL whose decision won (check keeps the first of equally strict ones). Decisions
    # of unlisted URLs are shared objects, so "is" alone would also name a carried URL that ties.
    deciding = (
        None if decision is own else next((inner for inner in verdict.carried if inner.decision is decision), None)
    )
    return {
        "url": verdict.url.url if verdict.url else url,
        "time": local.isoformat(timespec="minutes"),
        "timezone": str(policy.timezone),
        "window": decision.window,
        "user": identity.user,
        "client_ip": identity.client_ip,
        "group": identity.group,
        "group_why": identity.why,
        "walled_garden": bool(group and group.walled_garden),
        "matches": _matches(policy, verdict.classification, own),
        "technique": verdict.technique,
        "inner_url": verdict.inner_url,
        "carried": [
            {
                "url": inner.url,
                "decides": inner is deciding,
                "action": inner.decision.action if inner.decision else None,
                "category": inner.decision.category if inner.decision else None,
                "matches": _matches(policy, inner.classification, inner.decision),
            }
            for inner in verdict.carried
        ],
        "exemptions": [item.describe() for item in considered],
        "exemption_applied": decision.exemption.describe() if decision.exemption is not None else None,
        "action": decision.action,
        "category": decision.category,
        "severity": decision.severity,
        "why": decision.why,
        "error": verdict.error,
    }


def _matches(policy: Policy, classification: Classification | None, decision: Decision | None) -> list[dict[str, Any]]:
    """The classification's matches, each with its effect in `decision`, the decision made from them."""
    if classification is None or decision is None:
        return []
    return [_match(policy, decision, m) for m in classification.matches]


def _match(policy: Policy, decision: Decision, match: Match) -> dict[str, Any]:
    category = policy.categories.get(match.category)
    if match in decision.allowed_by:
        effect = "allows"
    elif match in decision.blocked_by:
        effect = "mandatory: blocked for everyone" if category and category.mandatory else "blocked for this group"
    else:
        effect = "not blocked for this group now"
    return {"category": match.category, "kind": match.kind, "rule": match.describe(), "effect": effect}


def render_text(explanation: dict[str, Any]) -> str:
    """The explanation for a person at a terminal."""
    e = explanation
    window = e["window"] or "none (outside every timetable window)"
    who = f"user {e['user']!r} at {e['client_ip']}" if e["user"] else f"address {e['client_ip']}"
    lines = [
        f"URL:        {e['url']}",
        f"time:       {e['time']} ({e['timezone']})",
        f"window:     {window}",
        f"who:        {who}",
        f"group:      {e['group']}{' (walled garden)' if e['walled_garden'] else ''}",
        f"  because   {e['group_why']}",
        "matched:" if e["matches"] else "matched:    no list entry",
    ]
    lines += [f"  {m['category']}: {m['rule']} ({m['kind']}) -> {m['effect']}" for m in e["matches"]]
    for inner in e["carried"]:
        action = (inner["action"] or "not a URL: nothing decided").upper()
        shown = action + (f" ({inner['category']})" if inner["category"] else "")
        lines.append(f"carries:    {inner['url']} -> {shown}{' (this decides)' if inner['decides'] else ''}")
        lines += [f"  {m['category']}: {m['rule']} ({m['kind']}) -> {m['effect']}" for m in inner["matches"]]
        if inner["action"] and not inner["matches"]:
            lines.append("  no list entry")
    if e["technique"]:
        lines.append(f"technique:  {e['technique']} (an attempt to get round the filter)")
    lines.append("exemptions: " + ("none active" if not e["exemptions"] else "considered:"))
    lines += [f"  {item}" for item in e["exemptions"]]
    if e["error"]:
        lines.append(f"error:      {e['error']}")
    verdict = e["action"].upper() + (f" ({e['category']}, severity {e['severity']})" if e["category"] else "")
    lines += [f"decision:   {verdict}", f"  because   {e['why']}"]
    # URLs, user names and reasons are untrusted: a terminal shows their control characters, never obeys them.
    return "".join(visible(line) + "\n" for line in lines)
