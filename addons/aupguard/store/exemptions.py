"""Store: exemptions and classroom overrides in their SQLite file, with the audit trail of who changed what."""

from __future__ import annotations

import ipaddress
import json
import os
import pwd
import re
from collections.abc import Callable, Iterable
from dataclasses import replace
from datetime import UTC, datetime, timedelta, tzinfo
from pathlib import Path

import sqlite_utils

from aupguard.base import paths
from aupguard.base.addresses import Network
from aupguard.config.policy import Policy
from aupguard.core.exemption import ALLOW_ONLY, BLOCK_ALL, EXEMPTION, KINDS, Exemption, ExemptionError
from aupguard.core.exemptions import ExemptionSet
from aupguard.lists.model import one_site
from aupguard.store.db import connect_private, utc_iso

DEFAULT_STORE = paths.DATA_DIR / "exemptions.db"


MAX_TEXT = 500  # reasons; names are bounded tighter


MAX_NAME = 128


MAX_SITES = 200


# The widest range a classroom override takes without `whole_school`: one teacher's command
# must not lock (or wall-garden) the whole school by a typo such as 0.0.0.0/0.
CLASSROOM_MIN_PREFIX = {4: 16, 6: 48}


def open_store(path: Path = DEFAULT_STORE) -> sqlite_utils.Database:
    """Open (creating if needed) the exemption store: 0600 file, 0700 directory, append-only audit."""
    db = connect_private(path)
    try:
        with db.conn:
            db.execute(
                """CREATE TABLE IF NOT EXISTS exemptions (
                     id INTEGER PRIMARY KEY,
                     kind TEXT NOT NULL,
                     group_name TEXT, username TEXT, network TEXT,
                     sites TEXT NOT NULL,          -- JSON array of domains
                     category TEXT,
                     until_utc TEXT NOT NULL,
                     created_utc TEXT NOT NULL, created_by TEXT NOT NULL, reason TEXT NOT NULL,
                     revoked_utc TEXT, revoked_by TEXT, revoke_reason TEXT)"""
            )
            db.execute("CREATE INDEX IF NOT EXISTS exemptions_active ON exemptions (revoked_utc, until_utc)")
            db.execute(
                """CREATE TABLE IF NOT EXISTS audit (
                     id INTEGER PRIMARY KEY,
                     ts_utc TEXT NOT NULL, actor TEXT NOT NULL,
                     action TEXT NOT NULL,        -- add | revoke
                     exemption_id INTEGER NOT NULL,
                     what TEXT NOT NULL,          -- the exemption as recorded, JSON
                     reason TEXT NOT NULL)"""
            )
            # Added columns (a store from before them gets them, NULL in its old rows): the
            # operating-system account that ran the command, beside the name given as --by.
            for table, column in (("exemptions", "os_user"), ("exemptions", "revoked_os_user"), ("audit", "os_user")):
                if column not in {row[1] for row in db.execute(f"PRAGMA table_info({table})")}:
                    db.execute(f"ALTER TABLE {table} ADD COLUMN {column} TEXT")
            # The audit trail is evidence: it can be appended to, never changed.
            for event in ("UPDATE", "DELETE"):
                db.execute(
                    f"""CREATE TRIGGER IF NOT EXISTS audit_no_{event.lower()} BEFORE {event} ON audit
                        BEGIN SELECT RAISE(ABORT, 'the audit table is append-only'); END"""
                )
    except BaseException:
        db.close()
        raise
    return db


def _text(value: str | None, name: str, bound: int) -> str:
    checked = _optional_text(value, name, bound)
    if checked is None:
        raise ExemptionError(f"{name} is required")
    return checked


def _optional_text(value: str | None, name: str, bound: int) -> str | None:
    value = (value or "").strip()
    if not value:
        return None
    if len(value) > bound:
        raise ExemptionError(f"{name} is longer than {bound} characters")
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ExemptionError(f"{name} contains control characters")
    return value


def current_os_user() -> str:
    """The operating-system account running this command, for the audit trail beside --by. Never fails.

    Taken from the process's uid, not $USER or $LOGNAME, which anyone can set; under
    sudo (uid 0) the account sudo names is added. An account with no name is its uid.
    """
    uid = os.getuid()
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:  # a uid with no passwd entry (a container's)
        name = f"uid {uid}"
    sudo = os.environ.get("SUDO_USER") if uid == 0 else None
    if sudo:
        name = f"{name} (sudo from {sudo})"
    return "".join(c if c.isprintable() else "?" for c in name)[:MAX_NAME]


def add(
    db: sqlite_utils.Database,
    policy: Policy,
    *,
    kind: str = EXEMPTION,
    group: str | None = None,
    user: str | None = None,
    network: str | None = None,
    sites: Iterable[str] = (),
    category: str | None = None,
    until: datetime,
    by: str,
    reason: str,
    now: datetime | None = None,
    site_categories: Callable[[str], Iterable[str]] | None = None,
    whole_school: bool = False,
) -> Exemption:
    """Record an exemption or classroom override and its audit line; raise ExemptionError if it is not allowed.

    `site_categories(domain)` names the categories a site is listed in, so that an
    exemption for a site in a mandatory category is refused at once rather than
    silently never applying. A classroom override's range may be wider than
    CLASSROOM_MIN_PREFIX (a /16, or /48 for IPv6) only with `whole_school`.
    """
    now = now or datetime.now(UTC)
    if kind not in KINDS:
        raise ExemptionError(f"unknown kind {kind!r}")
    if until.tzinfo is None:
        raise ExemptionError("until must carry a time zone")
    if until <= now:
        raise ExemptionError(f"until ({utc_iso(until)}) is not in the future")
    if until - now > timedelta(days=policy.exemption_max_days):
        raise ExemptionError(
            f"--until {until.astimezone(policy.timezone):%Y-%m-%d %H:%M} is more than {policy.exemption_max_days} "
            f"days away: the policy's exemptions.max_days ({policy.path}) is the longest an exemption may run"
        )
    by = _text(by, "--by (who is making this change)", MAX_NAME)
    reason = _text(reason, "--reason", MAX_TEXT)
    whom = [value for value in (group, user, network) if value]
    if kind == EXEMPTION and len(whom) != 1:
        raise ExemptionError("give exactly one of --group, --user or --ip")
    if kind != EXEMPTION and (group or user or not network):
        raise ExemptionError("a classroom override covers an address range: give --ip")
    if group is not None and group not in policy.groups:
        raise ExemptionError(f"unknown group {group!r}; the policy has {', '.join(policy.groups)}")
    user = _optional_text(user, "--user", MAX_NAME)
    parsed_network = _network(network) if network else None
    if kind != EXEMPTION and parsed_network is not None and not whole_school:
        widest = CLASSROOM_MIN_PREFIX[parsed_network.version]
        if parsed_network.prefixlen < widest:
            raise ExemptionError(
                f"--ip {parsed_network} is wider than a /{widest}: a classroom override is for one room's range; "
                "give --whole-school if you mean to cover more"
            )
    domains = tuple(dict.fromkeys(_domain(site) for site in sites))
    if len(domains) > MAX_SITES:
        raise ExemptionError(f"at most {MAX_SITES} sites")
    if kind == EXEMPTION and bool(domains) == bool(category):
        raise ExemptionError("give either --site or --category")
    if kind == EXEMPTION and len(domains) > 1:
        raise ExemptionError("an exemption names one site; add one per site")
    if kind == ALLOW_ONLY and (not domains or category):
        raise ExemptionError("allow-only mode needs at least one --site (and no --category)")
    if kind == BLOCK_ALL and (domains or category):
        raise ExemptionError("block-all mode takes no --site or --category")
    if category is not None:
        known = policy.categories.get(category)
        if known is None:
            raise ExemptionError(f"unknown category {category!r}")
        if not known.exemptable:
            raise ExemptionError(f"category {category} is mandatory: it is blocked for everyone and cannot be exempted")
    if kind == EXEMPTION and domains and site_categories is not None:
        mandatory = sorted(
            c for c in site_categories(domains[0]) if c in policy.categories and not policy.categories[c].exemptable
        )
        if mandatory:
            raise ExemptionError(
                f"{domains[0]} is listed in the mandatory category {', '.join(mandatory)}: it cannot be exempted"
            )
    os_user = current_os_user()
    row = {
        "kind": kind,
        "group_name": group,
        "username": user.casefold() if user else None,
        "network": str(parsed_network) if parsed_network else None,
        "sites": json.dumps(domains),
        "category": category,
        "until_utc": utc_iso(until),
        "created_utc": utc_iso(now),
        "created_by": by,
        "reason": reason,
        "os_user": os_user,
    }
    with db.conn:
        exemption_id = db.execute(
            f"INSERT INTO exemptions ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})", list(row.values())
        ).lastrowid
        assert exemption_id is not None  # an INSERT always sets it
        _audit(db, now, by, "add", exemption_id, row, reason, os_user)
    return _from_row({**row, "id": exemption_id})


def revoke(
    db: sqlite_utils.Database,
    exemption_id: int,
    *,
    by: str,
    reason: str | None = None,
    now: datetime | None = None,
    kinds: tuple[str, ...] = KINDS,
) -> Exemption:
    """End an exemption or override (of one of `kinds`) now; ExemptionError if there is none such, or it has ended."""
    now = now or datetime.now(UTC)
    by = _text(by, "--by (who is making this change)", MAX_NAME)
    reason = _optional_text(reason, "--reason", MAX_TEXT) or ""
    with db.conn:
        row = db.execute("SELECT * FROM exemptions WHERE id = ?", [exemption_id]).fetchone()
        if row is None:
            raise ExemptionError(f"there is no exemption or override #{exemption_id}")
        row = dict(zip([c[0] for c in db.execute("SELECT * FROM exemptions LIMIT 0").description], row))
        if row["kind"] not in kinds:
            raise ExemptionError(f"#{exemption_id} is a {row['kind'].replace('_', '-')}, not a {' or '.join(kinds)}")
        if row["revoked_utc"] is not None:
            raise ExemptionError(f"#{exemption_id} was already revoked at {row['revoked_utc']} by {row['revoked_by']}")
        if row["until_utc"] <= utc_iso(now):
            raise ExemptionError(f"#{exemption_id} already ended at {row['until_utc']}")
        os_user = current_os_user()
        db.execute(
            "UPDATE exemptions SET revoked_utc = ?, revoked_by = ?, revoke_reason = ?, revoked_os_user = ? WHERE id = ?",
            [utc_iso(now), by, reason, os_user, exemption_id],
        )
        _audit(db, now, by, "revoke", exemption_id, row, reason, os_user)
    return replace(_from_row(row), revoked_at=now, revoked_by=by)


def _audit(
    db, now: datetime, actor: str, action: str, exemption_id: int, what: dict, reason: str, os_user: str
) -> None:
    db.execute(
        "INSERT INTO audit (ts_utc, actor, os_user, action, exemption_id, what, reason) VALUES (?, ?, ?, ?, ?, ?, ?)",
        [utc_iso(now), actor, os_user, action, exemption_id, json.dumps(what, sort_keys=True), reason],
    )


def listing(db: sqlite_utils.Database, *, include_ended: bool = False, now: datetime | None = None) -> list[Exemption]:
    """Exemptions and overrides, newest first: the active ones, or (include_ended) all of them."""
    if include_ended:
        rows = db.query("SELECT * FROM exemptions ORDER BY id DESC")
    else:
        when = utc_iso(now or datetime.now(UTC))
        rows = db.query("SELECT * FROM exemptions WHERE revoked_utc IS NULL AND until_utc > ? ORDER BY id DESC", [when])
    return [_from_row(row) for row in rows]


AUDIT_COLUMNS = ("ts_utc", "actor", "os_user", "action", "exemption_id", "what", "reason")


def audit_trail(db: sqlite_utils.Database) -> list[dict]:
    """Every change ever made, oldest first, as rows of AUDIT_COLUMNS."""
    return list(db.query(f"SELECT {', '.join(AUDIT_COLUMNS)} FROM audit ORDER BY id"))


def load_active(path: Path, when: datetime | None = None) -> ExemptionSet:
    """The snapshot for `aupguard explain`/`classify`: active exemptions at `path` (none if there is no store)."""
    if not Path(path).exists():
        return ExemptionSet()
    db = open_store(path)
    try:
        return ExemptionSet(listing(db, now=when))
    finally:
        db.close()


def _network(text: str) -> Network:
    try:
        return ipaddress.ip_network(text.strip())
    except ValueError as exc:
        raise ExemptionError(f"--ip {text!r} is not an address or range such as 10.20.4.0/24 ({exc})") from None


def _domain(text: str) -> str:
    """A --site as stored: one site (never a public suffix such as `com`), its `www.` dropped if the rest is one."""
    raw = text.strip()
    if "://" in raw:  # a pasted URL: its host
        raw = raw.split("://", 1)[1].split("/", 1)[0].rsplit("@", 1)[-1]
    try:
        domain = one_site(raw.split("/", 1)[0])
    except ValueError as exc:  # URLError, or a codec's UnicodeError
        raise ExemptionError(f"--site {text!r} is not one site: {exc}") from None
    if domain.startswith("www."):
        try:
            return one_site(domain[4:])
        except ValueError:
            pass  # www.com is a site; com is not
    return domain


def _when(text: str) -> datetime:
    return datetime.fromisoformat(text.rstrip("Z")).replace(tzinfo=UTC)


def _from_row(row: dict) -> Exemption:
    return Exemption(
        id=row["id"],
        kind=row["kind"],
        until=_when(row["until_utc"]),
        created_at=_when(row["created_utc"]),
        created_by=row["created_by"],
        reason=row["reason"],
        group=row["group_name"],
        user=row["username"],
        network=ipaddress.ip_network(row["network"]) if row["network"] else None,
        sites=tuple(json.loads(row["sites"])),
        category=row["category"],
        revoked_at=_when(row["revoked_utc"]) if row.get("revoked_utc") else None,
        revoked_by=row.get("revoked_by"),
        os_user=row.get("os_user"),
    )


_RELATIVE = re.compile(r"\+(\d{1,4})([mhd])")


def parse_until(text: str, zone: tzinfo, now: datetime | None = None) -> datetime:
    """When an exemption ends: "+45m", "+2h", "+3d", "15:30" (today, school time) or an ISO date-time.

    A time without a zone is the school's local time; the result is UTC.
    """
    now = now or datetime.now(UTC)
    text = text.strip()
    relative = _RELATIVE.fullmatch(text)
    if relative:
        amount, unit = int(relative.group(1)), relative.group(2)
        return now + timedelta(**{{"m": "minutes", "h": "hours", "d": "days"}[unit]: amount})
    try:
        if re.fullmatch(r"\d{1,2}:\d{2}", text):
            local = now.astimezone(zone)
            hour, minute = map(int, text.split(":"))
            when = local.replace(hour=hour, minute=minute, second=0, microsecond=0)
        else:
            when = datetime.fromisoformat(text)
    except ValueError:
        raise ExemptionError(f"--until {text!r} is not a time: use +45m, +2h, +3d, 15:30 or 2026-11-23T15:30") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=zone)
    return when.astimezone(UTC)
