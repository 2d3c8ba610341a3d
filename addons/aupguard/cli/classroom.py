"""`aupguard classroom`: one room's address range in "allow only these sites" or "block all" mode."""

from __future__ import annotations

from pathlib import Path

import click

from aupguard.cli.exempt import by_option, deciding_engine, record_change, show, site_categories, until_option
from aupguard.cli.options import exemption_store, format_option, index_option, policy_option, store_option
from aupguard.core.exemption import ALLOW_ONLY, BLOCK_ALL, EXEMPTION
from aupguard.store import exemptions


@click.group()
def classroom() -> None:
    """Classroom overrides: one room's address range in "allow only these sites" or "block all" mode.

    \b
    aupguard classroom set --ip 10.20.4.0/24 --mode allow-only --site bbc.co.uk --site kahoot.it \\
        --until +1h --by "Mr Jones" --reason "Year 10 mock exam"
    aupguard classroom list
    aupguard classroom end 14 --by "Mr Jones"
    Sites in mandatory categories stay blocked whatever the mode. Each --site must be one site,
    not a public suffix such as com or co.uk.
    """


@classroom.command("set")
@policy_option
@store_option
@index_option
@click.option("--ip", "network", required=True, metavar="IP/CIDR", help="The room's address range.")
@click.option("--mode", type=click.Choice(["allow-only", "block-all"]), required=True)
@click.option(
    "--site",
    "sites",
    multiple=True,
    metavar="DOMAIN",
    help="A site allowed in allow-only mode (repeatable; not a public suffix).",
)
@until_option
@by_option
@click.option("--reason", required=True, help="Why (recorded; e.g. the lesson or exam).")
@click.option(
    "--whole-school",
    is_flag=True,
    help="Allow a range wider than a /16 (IPv6: /48), such as 0.0.0.0/0: refused without it.",
)
def classroom_set(
    policy_path: Path,
    store: Path | None,
    index_path: Path,
    network: str,
    mode: str,
    sites: tuple[str, ...],
    until: str,
    by: str,
    reason: str,
    whole_school: bool,
) -> None:
    """Put a room into allow-only or block-all mode until a time.

    A range wider than a /16 (IPv6: /48) is refused unless --whole-school is given,
    so that one mistyped command cannot lock every room.
    """
    engine = deciding_engine(policy_path, index_path)
    deadline = exemptions.parse_until(until, engine.policy.timezone)
    db = exemption_store(store)
    record_change(
        lambda: exemptions.add(
            db,
            engine.policy,
            kind=ALLOW_ONLY if mode == "allow-only" else BLOCK_ALL,
            network=network,
            sites=sites,
            until=deadline,
            by=by,
            reason=reason,
            site_categories=site_categories(engine),
            whole_school=whole_school,
        )
    )


@classroom.command("list")
@store_option
@policy_option
@click.option("--all", "include_ended", is_flag=True, help="Include ended ones.")
@format_option()
def classroom_list(store: Path | None, policy_path: Path, include_ended: bool, fmt: str) -> None:
    """List classroom overrides (newest first), times in the school's time zone (JSON: UTC)."""
    items = exemptions.listing(exemption_store(store), include_ended=include_ended)
    show([item for item in items if item.kind != EXEMPTION], fmt, policy_path)


@classroom.command("end")
@store_option
@click.argument("override_id", type=int, metavar="ID")
@by_option
@click.option("--reason", default=None, help="Why (recorded).")
def classroom_end(store: Path | None, override_id: int, by: str, reason: str | None) -> None:
    """End a classroom override now."""
    db = exemption_store(store)
    record_change(lambda: exemptions.revoke(db, override_id, by=by, reason=reason, kinds=(ALLOW_ONLY, BLOCK_ALL)))
