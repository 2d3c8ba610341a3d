"""`aupguard exempt`: time-limited exemptions, and the listing and recording shared with `classroom`."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import UTC, datetime, tzinfo
from pathlib import Path

import click

from aupguard.base.urlnorm import normalize_url
from aupguard.cli.options import exemption_store, format_option, index_option, policy_option, store_option
from aupguard.config.loader import load_policy
from aupguard.config.policy import PolicyError
from aupguard.core.engine import Engine
from aupguard.core.exemption import Exemption
from aupguard.report.output import Section, visible, write_rows
from aupguard.runtime import load_engine
from aupguard.store import exemptions
from aupguard.store.db import utc_iso

until_option = click.option(
    "--until",
    "until",
    required=True,
    metavar="TIME",
    help="When it ends: +45m, +2h, +3d, 15:30 (today) or 2026-11-23T15:30.",
)
by_option = click.option("--by", "by", required=True, metavar="NAME", help="Who is making this change (recorded).")

LISTING_COLUMNS = ("id", "kind", "who", "what", "until", "by", "os_user", "reason", "revoked")


def deciding_engine(policy_path: Path, index_path: Path) -> Engine:
    """The engine a change is checked against: the proxy's (runtime.load_engine), without the store's exemptions."""
    return load_engine(policy_path, index_path=index_path, exemptions_path=None)


def site_categories(engine: Engine) -> Callable[[str], Iterable[str]]:
    """The categories `engine` lists a site in, for refusing an exemption a mandatory category would override."""
    return lambda domain: engine.classifier.classify(normalize_url(f"http://{domain}/")).categories


def show(items: Iterable[Exemption], fmt: str, policy_path: Path) -> None:
    """Exemptions in `fmt`: a table or CSV in the school's time (as a teacher typed --until), JSON in UTC."""
    if fmt == "json":
        when: Callable[[datetime], str] = utc_iso
    else:
        zone: tzinfo
        try:
            zone = load_policy(policy_path).timezone
        except PolicyError as exc:
            click.echo(f"warning: times in UTC: {exc}", err=True)
            zone = UTC
        when = lambda moment: moment.astimezone(zone).strftime("%Y-%m-%d %H:%M")  # noqa: E731
    rows = [
        {
            "id": item.id,
            "kind": item.kind,
            "who": item.who,
            # A stored site that names no one site (a public suffix recorded before it was refused) never applies.
            "what": item.what + "".join(f" (refused, never applied: {why})" for why in item.refused_sites().values()),
            "until": when(item.until),
            "by": item.created_by,
            "os_user": item.os_user,  # the account that ran the command, beside the name given as --by
            "reason": item.reason,
            "revoked": f"{when(item.revoked_at)} by {item.revoked_by}" if item.revoked_at else None,
        }
        for item in items
    ]
    write_rows(Section("exemptions", "", LISTING_COLUMNS, rows), fmt)


def record_change(change: Callable[[], Exemption]) -> None:
    """Make `change` (an add or a revoke) and say what it did; ExemptionError reaches the one error handler."""
    item = change()
    click.echo(f"{'revoked' if item.revoked_at else 'added'} {visible(item.describe())}")


@click.group()
def exempt() -> None:
    """Time-limited exemptions: let a group, user or address range reach a site or category.

    \b
    aupguard exempt add --group pupils --category games --until +1h --by "Ms Khan" --reason "coding lesson"
    aupguard exempt add --user j.smith --category adult --until +14d --by "Head" --reason "art history, letter 14/11"
    aupguard exempt list
    aupguard exempt list --format csv > exemptions.csv
    aupguard exempt revoke 12 --by "Ms Khan"
    Every change is recorded with who, when, why and the computer account that ran it; a running
    proxy honours it within seconds. Any category can be exempted except a mandatory one
    (`mandatory: true` in the policy; the bundled policy marks only illegal): adult included, for
    the Head's written permission. A --site must be one site, not a public suffix such as com or
    co.uk. --until may be at most the policy's exemptions.max_days ahead (bundled: 31).
    """


@exempt.command("add")
@policy_option
@store_option
@index_option
@click.option("--group", default=None, help="Exempt this policy group.")
@click.option("--user", default=None, help="Exempt this proxy-authenticated user.")
@click.option("--ip", "network", default=None, metavar="IP/CIDR", help="Exempt this address or range.")
@click.option("--site", default=None, metavar="DOMAIN", help="This site (and its subdomains); not a public suffix.")
@click.option("--category", default=None, help="This category (any but a mandatory one).")
@until_option
@by_option
@click.option("--reason", required=True, help="Why (recorded; e.g. the lesson, or the Head's written permission).")
def exempt_add(
    policy_path: Path,
    store: Path | None,
    index_path: Path,
    group: str | None,
    user: str | None,
    network: str | None,
    site: str | None,
    category: str | None,
    until: str,
    by: str,
    reason: str,
) -> None:
    """Add an exemption."""
    engine = deciding_engine(policy_path, index_path)
    deadline = exemptions.parse_until(until, engine.policy.timezone)
    db = exemption_store(store)
    record_change(
        lambda: exemptions.add(
            db,
            engine.policy,
            group=group,
            user=user,
            network=network,
            sites=[site] if site else [],
            category=category,
            until=deadline,
            by=by,
            reason=reason,
            site_categories=site_categories(engine),
        )
    )


@exempt.command("list")
@store_option
@policy_option
@click.option("--all", "include_ended", is_flag=True, help="Include ended and revoked ones.")
@format_option()
def exempt_list(store: Path | None, policy_path: Path, include_ended: bool, fmt: str) -> None:
    """List active exemptions and classroom overrides (newest first).

    The table and CSV show times in the school's time zone (the policy's); JSON (one
    object per line) in UTC. A table piped or redirected keeps each row on one line.
    """
    show(exemptions.listing(exemption_store(store), include_ended=include_ended), fmt, policy_path)


@exempt.command("revoke")
@store_option
@click.argument("exemption_id", type=int, metavar="ID")
@by_option
@click.option("--reason", default=None, help="Why (recorded).")
def exempt_revoke(store: Path | None, exemption_id: int, by: str, reason: str | None) -> None:
    """End an exemption (or classroom override) now."""
    db = exemption_store(store)
    record_change(lambda: exemptions.revoke(db, exemption_id, by=by, reason=reason))


@exempt.command("audit")
@store_option
@format_option(default="json")
def exempt_audit(store: Path | None, fmt: str) -> None:
    """Every change ever made, oldest first (who, when, what, why): JSON lines unless --format says otherwise."""
    rows = exemptions.audit_trail(exemption_store(store))
    write_rows(Section("audit", "", exemptions.AUDIT_COLUMNS, rows), fmt)
