"""`aupguard explain`: the whole decision for one URL, as the proxy would make it.

It is built from the Verdict of `Engine.check`, the call the proxy makes, so an
explanation can never disagree with what the filter does: the group and why,
every list entry that matched and what the group does with its category, the
timetable window in force, the exemptions considered, and the final action.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from .engine import Engine, Verdict
from .identify import Identity


def explain(engine: Engine, url: str, identity: Identity, when: datetime) -> dict[str, Any]:
    """The decision for `url` as plain data (JSON-ready); `when` must be timezone-aware."""
    verdict = engine.check(url, identity, when=when)
    policy = engine.policy
    decision = verdict.decision
    group = policy.groups.get(identity.group)
    local = when.astimezone(policy.timezone)
    considered = engine.exemptions.active_for(identity, verdict.url, when) if verdict.url else ()
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
        "matches": [_match(engine, verdict, m) for m in (verdict.classification.matches if verdict.classification else ())],
        "exemptions": [item.describe() for item in considered],
        "exemption_applied": decision.exemption.describe() if decision.exemption is not None else None,
        "action": decision.action,
        "category": decision.category,
        "severity": decision.severity,
        "why": decision.why,
        "error": verdict.error,
    }


def _match(engine: Engine, verdict: Verdict, match) -> dict[str, Any]:
    decision = verdict.decision
    category = engine.policy.categories.get(match.category)
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
    lines.append("exemptions: " + ("none active" if not e["exemptions"] else "considered:"))
    lines += [f"  {item}" for item in e["exemptions"]]
    if e["error"]:
        lines.append(f"error:      {e['error']}")
    verdict = e["action"].upper() + (f" ({e['category']}, severity {e['severity']})" if e["category"] else "")
    lines += [f"decision:   {verdict}", f"  because   {e['why']}"]
    return "\n".join(lines) + "\n"
