"""Record: the incident log. One row per blocked (or flagged) request, in SQLite.

The proxy never writes to the database on its event loop: `IncidentWriter.submit`
only queues, and a background thread writes everything queued in one transaction at a time
(group commit), telling the proxy when a block page's incident is committed. The file
holds pupils' personal data (UK GDPR), so it is created 0600 inside a 0700
directory, holds only the fields the AUP promises to log, and `purge` enforces
retention. Strings are stored as received, bounded in length; escaping is the
job of whatever outputs them (report/output.py).
"""

from __future__ import annotations

import asyncio
import bisect
import hashlib
import json
import logging
import operator
import re
import sqlite3
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlite_utils

from aupguard.base.errors import AupguardError
from aupguard.base.vocabulary import SEVERITIES
from aupguard.core.incident import Incident, RepeatRule
from aupguard.store.db import connect_private, utc_iso

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2
# Incidents an IncidentWriter keeps in memory at most, queued or waiting for an unwritable database
# to take them. Measured (tracemalloc): ~0.9 KB each for a typical block page's incident, 42 KB at
# most (every field at its bound, in 4-byte characters): 18 MB typical, 0.8 GB in the worst case.
MAX_HELD = 20_000

# Longest stored form of each text column. Longer values are cut; the URL's full
# length and hash are kept so long URLs still group and compare correctly.
_BOUNDS = {
    "ref": 32,
    "local_date": 10,
    "local_time": 8,
    "client_ip": 64,
    "username": 256,
    "user_group": 128,
    "method": 32,
    "url": 2048,
    "host": 255,
    "category": 64,
    "rule": 256,
    "action": 16,
    "severity": 16,
    "user_agent": 512,
    "search_term": 256,
    "technique": 128,
    "inner_url": 2048,
}
# "scheme://user:password@host" -> "scheme://host": credentials are never logged.
_USERINFO = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*://)[^/?#]*@")
_SURROGATE = re.compile("[\ud800-\udfff]")


# -- schema --------------------------------------------------------------------------------------


class SchemaError(AupguardError, RuntimeError):
    """The database was written by a newer aupguard than this one."""


def _create_v1(db: sqlite_utils.Database) -> None:
    incidents = db.table("incidents")
    incidents.create(
        {
            "ref": str,
            "ts_utc": str,
            "local_date": str,
            "local_time": str,
            "client_ip": str,
            "username": str,
            "user_group": str,
            "method": str,
            "url": str,
            "url_sha256": str,
            "url_length": int,
            "host": str,
            "categories": str,  # JSON array, primary first
            "category": str,  # the primary category, for GROUP BY and the index
            "rule": str,
            "action": str,
            "severity": str,
            "user_agent": str,
            "search_term": str,
            "technique": str,
            "inner_url": str,
        },
        pk="ref",
        not_null=[
            "ts_utc", "local_date", "local_time", "client_ip", "user_group", "method", "url",
            "url_sha256", "url_length", "host", "categories", "rule", "action", "severity",
        ],
    )  # fmt: skip
    for column in ("ts_utc", "category", "username", "client_ip", "severity"):
        incidents.create_index([column], if_not_exists=True)


def _index_recent_by_user_and_address(db: sqlite_utils.Database) -> None:
    """v2: the repeat count (RepeatRule) looks up one user's or one address's recent incidents."""
    incidents = db.table("incidents")
    for column in ("username", "client_ip"):
        db.execute(f"DROP INDEX IF EXISTS idx_incidents_{column}")  # the pair's index serves these lookups too
        incidents.create_index([column, "ts_utc"], if_not_exists=True)


# _MIGRATIONS[n] brings a database from schema version n to n + 1.
_MIGRATIONS = (_create_v1, _index_recent_by_user_and_address)


def _schema_version(db: sqlite_utils.Database) -> int:
    if not db.table("meta").exists():
        return 0
    row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    return int(row[0]) if row else 0


def _migrate(db: sqlite_utils.Database) -> None:
    if _schema_version(db) == SCHEMA_VERSION:
        return
    # IMMEDIATE: two workers starting at once must not both create the schema.
    db.execute("BEGIN IMMEDIATE")
    try:
        db.table("meta").create({"key": str, "value": str}, pk="key", not_null=["value"], if_not_exists=True)
        version = _schema_version(db)
        if version > SCHEMA_VERSION:
            raise SchemaError(
                f"the incident database has schema version {version}; this aupguard knows up to {SCHEMA_VERSION}"
            )
        for migration in _MIGRATIONS[version:]:
            migration(db)
        db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?)", [str(SCHEMA_VERSION)])
        db.commit()
    except BaseException:
        db.rollback()
        raise


def open_db(path: Path, *, check_same_thread: bool = True) -> sqlite_utils.Database:
    """Open (creating or migrating as needed) the incident database at `path`."""
    db = connect_private(path, check_same_thread=check_same_thread)
    try:
        _migrate(db)
    except BaseException:
        db.close()
        raise
    return db


def _bounded(value: str | None, column: str) -> str | None:
    """`value` cut to its column's bound, as text SQLite can store.

    Lone surrogates (mitmproxy decodes undecodable bytes with surrogateescape)
    cannot be encoded as UTF-8 and would fail the whole batch: they become U+FFFD.
    """
    if value is None:
        return None
    return _SURROGATE.sub("\ufffd", value[: _BOUNDS[column]])


def _row(incident: Incident) -> dict[str, Any]:
    url = _USERINFO.sub(r"\1", incident.url)
    inner_url = _USERINFO.sub(r"\1", incident.inner_url) if incident.inner_url is not None else None
    categories = [_bounded(name, "category") for name in incident.categories]
    return {
        "ref": _bounded(incident.ref, "ref"),
        "ts_utc": utc_iso(incident.ts_utc),
        "local_date": _bounded(incident.local_date, "local_date"),
        "local_time": _bounded(incident.local_time, "local_time"),
        "client_ip": _bounded(incident.client_ip, "client_ip"),
        "username": _bounded(incident.username, "username"),
        "user_group": _bounded(incident.group, "user_group"),
        "method": _bounded(incident.method, "method"),
        "url": _bounded(url, "url"),
        # Of the full URL: long URLs that differ only after the cut stay distinguishable.
        "url_sha256": hashlib.sha256(url.encode("utf-8", "surrogatepass")).hexdigest(),
        "url_length": len(url),
        "host": _bounded(incident.host, "host"),
        "categories": json.dumps(categories),
        "category": categories[0] if categories else None,
        "rule": _bounded(incident.rule, "rule"),
        "action": incident.action,
        "severity": incident.severity,
        "user_agent": _bounded(incident.user_agent, "user_agent"),
        "search_term": _bounded(incident.search_term, "search_term"),
        "technique": _bounded(incident.technique, "technique"),
        "inner_url": _bounded(inner_url, "inner_url"),
    }


# The columns _row fills, in its order.
_COLUMNS = (
    "ref", "ts_utc", "local_date", "local_time", "client_ip", "username", "user_group", "method", "url",
    "url_sha256", "url_length", "host", "categories", "category", "rule", "action", "severity", "user_agent",
    "search_term", "technique", "inner_url",
)  # fmt: skip
_values = operator.itemgetter(*_COLUMNS)
_INSERT = f"INSERT INTO incidents ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' for _ in _COLUMNS)})"
# The same for a batch given as one JSON array of rows (each an array in _COLUMNS' order).
_INSERT_BATCH = (
    f"INSERT INTO incidents ({', '.join(_COLUMNS)}) "
    f"SELECT {', '.join(f'value->>{n}' for n in range(len(_COLUMNS)))} FROM json_each(?)"
)


def purge(db: sqlite_utils.Database, older_than_days: int, now: datetime | None = None) -> int:
    """Delete incidents older than `older_than_days` days before `now`; return how many went.

    The WAL is checkpointed afterwards so the deleted rows do not linger in it.
    """
    if older_than_days < 0:
        raise ValueError("older_than_days must not be negative")
    cutoff = utc_iso((now or datetime.now(UTC)) - timedelta(days=older_than_days))
    deleted = db.execute("DELETE FROM incidents WHERE ts_utc < ?", [cutoff]).rowcount
    if deleted:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return deleted


# -- the writer thread ---------------------------------------------------------------------------

_POLL_S = 0.5  # how often an idle writer checks that the program has not ended without close()
_PROBE_ROWS = 100  # how many held incidents a writer that could not write tries first when it tries again
_DROP_LOG_S = 10.0  # how often dropped incidents are counted in the log, while they are


class IncidentWriter:
    """Writes submitted incidents to the database at `path` from its own thread, by group commit.

    `submit` is safe from any thread and never blocks or does I/O, so the proxy's event loop
    can call it. The thread takes everything submitted since its last commit and writes it in
    one transaction (at most `max_batch` rows): the more incidents arrive, the larger its
    batches, so it keeps up under load instead of falling behind. An incident submitted with
    a `release` callback is released once its transaction has committed: the proxy holds the
    block page that shows its reference until then, so a page that was sent is never for an
    incident the database does not have. Committed means handed to the OS (WAL with
    synchronous=NORMAL: no fsync per commit): that survives the proxy being killed, even by
    SIGKILL, but a power cut or kernel crash may lose the last commits.

    When the database cannot be written (a full disk, I/O errors, a lock held for longer than
    the busy timeout) the thread says so once, loudly; releases what waits at once, so block
    pages go out without waiting (the requests are blocked all the same, and filtering goes
    on); keeps the incidents in memory; and tries again every `retry_interval` seconds,
    writing all of them once it can, when it says so once again. At most `max_held`
    incidents are held (queued or waiting to be written); beyond that `submit` drops the
    incident, counts it in `dropped` and the thread says so: losing a log line is better than
    stalling every pupil's browsing or exhausting the memory.

    Releases run on `loop` (one call_soon_threadsafe per batch) when one is given, otherwise
    in the writer's thread.

    Lifecycle: start(), submit()..., close(). close() returns once every submitted incident
    is written (or, when the database stays unwritable until its timeout, lost and said so).
    If the program ends without close(), the thread notices the main thread has finished,
    writes what is queued and stops.

    With a `repeat_rule`, repeated attempts are raised to its severity as they are written
    (RepeatRule). It may be replaced while running (a policy reload).
    """

    def __init__(
        self,
        path: Path,
        *,
        repeat_rule: RepeatRule | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
        max_held: int = MAX_HELD,
        max_batch: int = 5_000,
        retry_interval: float = 1.0,
    ) -> None:
        self.path = Path(path)
        self.repeat_rule = repeat_rule
        self.loop = loop
        self.max_held = max_held
        self.max_batch = max_batch
        self.retry_interval = retry_interval
        self._lock = threading.Lock()
        self._submitted = threading.Condition(self._lock)  # the thread waits on it for work
        self._progress = threading.Condition(self._lock)  # flush() waits on it
        self._rows: list[dict[str, Any]] = []  # submitted, not yet taken by the thread
        self._releases: list[Callable[[], None]] = []  # the callbacks of those rows
        self._state = "new"  # -> "running" -> "closed"
        self._stop_by: float | None = None  # set by close(): when the thread must have finished
        self._thread: threading.Thread | None = None
        self._held = 0  # submitted, neither written nor lost: what max_held bounds
        self._accepted = 0  # submitted since start, for flush()
        self._settled = 0  # of those, written or lost
        self._written = 0
        self._dropped = 0
        self._dropped_logged = 0
        self._drops_logged_at = 0.0

    @property
    def written(self) -> int:
        """Incidents committed to the database so far."""
        return self._written

    @property
    def dropped(self) -> int:
        """Incidents lost: beyond `max_held`, malformed, or still unwritable when the writer stopped."""
        return self._dropped

    @property
    def held(self) -> int:
        """Incidents in memory: submitted and not yet written."""
        return self._held

    def start(self) -> None:
        """Open the database (raising if that fails) and start the writer thread."""
        if self._state != "new":
            raise RuntimeError("IncidentWriter can be started once")
        ready = threading.Event()
        failure: list[BaseException] = []
        self._thread = threading.Thread(
            target=self._run, args=(ready, failure), name="aupguard-incident-writer", daemon=False
        )
        self._thread.start()
        ready.wait()
        if failure:
            self._thread.join()
            raise failure[0]
        self._state = "running"

    def submit(self, incident: Incident, release: Callable[[], None] | None = None) -> bool:
        """Queue `incident` for writing; `release` is called once it is committed, or at once if the
        database cannot be written now (it is then held in memory). Never blocks.

        Returns False when the incident was dropped (`max_held` are held): `release` is then never
        called. What is queued is the stored row, every field already cut to its bound: a flood
        of blocked 64 KB URLs or 1 MB User-Agents waits at a few KB each, not at the size it
        arrived. A malformed incident raises here.
        """
        try:
            row = _row(incident)  # outside the lock: the writer thread and other callers wait on it
        except Exception:
            self._count_dropped(1)
            raise
        with self._lock:
            if self._state != "running":
                raise RuntimeError(f"IncidentWriter is {self._state}, not running")
            if self._held >= self.max_held:
                self._dropped += 1  # logged by the writer thread: no I/O here
                return False
            self._held += 1
            self._accepted += 1
            self._rows.append(row)
            if release is not None:
                self._releases.append(release)
            self._submitted.notify()
        return True

    def flush(self, timeout: float = 10.0) -> None:
        """Return once every incident submitted before this call is in the database (or lost)."""
        with self._lock:
            if self._state != "running":
                raise RuntimeError(f"IncidentWriter is {self._state}, not running")
            target = self._accepted
            if not self._progress.wait_for(lambda: self._settled >= target, timeout):
                raise TimeoutError(f"incidents not written within {timeout} s")

    def close(self, timeout: float = 10.0) -> None:
        """Write everything submitted, then stop the thread. Later submits raise RuntimeError.

        While the database cannot be written, the thread keeps trying until shortly before
        `timeout`, then gives up on what it holds (counted in `dropped`, logged).
        """
        with self._lock:
            if self._state != "running":
                self._state = "closed"
                return
            self._state = "closed"
            self._stop_by = time.monotonic() + timeout * 0.9
            self._submitted.notify()
        assert self._thread is not None
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError(f"incident writer did not finish within {timeout} s")

    def __enter__(self) -> IncidentWriter:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- in the thread ---------------------------------------------------------------------

    def _run(self, ready: threading.Event, failure: list[BaseException]) -> None:
        try:
            db = open_db(self.path)
        except BaseException as exc:
            failure.append(exc)
            ready.set()
            return
        db.conn.isolation_level = None  # no implicit BEGIN: a lone INSERT commits by itself (_insert)
        ready.set()
        try:
            self._loop(db)
        except BaseException:
            log.exception("the incident writer stopped; incidents are no longer recorded")
            raise
        finally:
            self._log_drops(at_once=True)
            db.close()

    def _loop(self, db: sqlite_utils.Database) -> None:
        unwritten: list[dict[str, Any]] = []  # taken, not yet written: the database would not take them
        failing_since: float | None = None  # when the database last stopped taking incidents
        retry_at = 0.0  # while failing: when to try again
        stop_by: float | None = None
        while True:
            if failing_since is not None:
                wait = max(0.0, retry_at - time.monotonic())
            else:
                wait = 0.0 if stop_by is not None else _POLL_S
            rows, releases, stop_by = self._take(wait)
            unwritten += rows
            if unwritten and time.monotonic() >= retry_at:
                failure = self._write(db, unwritten, first=_PROBE_ROWS if failing_since is not None else None)
                if failure is None and failing_since is not None:
                    log.warning(
                        "the incident database %s can be written again: the incidents held for %.0f s are written",
                        self.path,
                        time.monotonic() - failing_since,
                    )
                    failing_since = None
                elif failure is not None:
                    if failing_since is None:
                        failing_since = time.monotonic()
                        log.critical(
                            "INCIDENTS ARE NOT BEING WRITTEN: the incident database %s cannot be written (%s). "
                            "Filtering goes on and block pages go out without waiting; up to %d incidents "
                            "are kept in memory and written once it can be written, tried every %g s; "
                            "beyond that they are lost. Free space on its disk or fix the error.",
                            self.path,
                            failure,
                            self.max_held,
                            self.retry_interval,
                        )
                    retry_at = time.monotonic() + self.retry_interval
            self._release(releases)
            self._log_drops()
            if stop_by is not None:
                if not unwritten:
                    return
                if time.monotonic() + self.retry_interval > stop_by:
                    log.critical(
                        "the incident writer is stopping and %s still cannot be written: %d incidents are lost",
                        self.path,
                        len(unwritten),
                    )
                    self._settle(len(unwritten), lost=len(unwritten))
                    return
            elif not rows and not threading.main_thread().is_alive():
                with self._lock:  # the program ended without close(): write what is queued, then stop
                    self._state = "closed"
                    self._stop_by = time.monotonic()

    def _take(self, wait: float) -> tuple[list[dict[str, Any]], list[Callable[[], None]], float | None]:
        """Everything submitted (waiting up to `wait` s for something), its releases, and close()'s deadline."""
        with self._lock:
            if not self._rows and wait > 0 and self._stop_by is None:
                self._submitted.wait(wait)
            rows, self._rows = self._rows, []
            releases, self._releases = self._releases, []
            return rows, releases, self._stop_by

    def _write(self, db: sqlite_utils.Database, rows: list[dict[str, Any]], first: int | None) -> Exception | None:
        """Write `rows` oldest first, `max_batch` per transaction (`first` in the first), removing each
        batch from `rows` once committed; the error that stopped it, if any."""
        size = first or self.max_batch
        while rows:
            batch = rows[:size]
            try:
                written = self._insert(db, batch)
            except Exception as exc:  # sqlite3.Error or OSError: the batch stays for the next try
                return exc
            del rows[: len(batch)]
            self._settle(len(batch), written=written)
            size = self.max_batch
        return None

    def _settle(self, count: int, *, written: int = 0, lost: int = 0) -> None:
        """`count` held incidents are done with: `written`, `lost` (the rest were dropped as malformed)."""
        with self._lock:
            self._held -= count
            self._settled += count
            self._written += written
            self._dropped += lost
            self._progress.notify_all()

    def _release(self, releases: list[Callable[[], None]]) -> None:
        if not releases:
            return
        if self.loop is None:
            _call_each(releases)
            return
        try:
            self.loop.call_soon_threadsafe(_call_each, releases)
        except RuntimeError:  # the loop is closed: nothing waits any more
            pass

    def _insert(self, db: sqlite_utils.Database, rows: list[dict[str, Any]]) -> int:
        """Insert `rows` in one transaction; return how many were inserted.

        Usually one statement taking the batch as one JSON parameter, committed by itself: each
        call into SQLite lets go of the GIL, and taking it back from a busy event loop can cost a
        switch interval (5 ms), which every block page in the batch waits for.
        """
        rule = self.repeat_rule
        if rule is None or not any(f'"{rule.category}"' in row["categories"] for row in rows):
            batch = json.dumps(list(map(_values, rows)), ensure_ascii=False)
            # SQLite's JSON functions cut a string at an escaped NUL: such a batch goes the long way, whole.
            if "\\u0000" not in batch:
                try:
                    db.conn.execute(_INSERT_BATCH, [batch])
                    return len(rows)
                except sqlite3.IntegrityError:  # a taken ref: nothing was inserted; one by one below
                    pass
        table = db.table("incidents")
        inserted = len(rows)
        db.execute("BEGIN IMMEDIATE")  # take the write lock now: a deferred upgrade can fail without waiting
        try:
            # Inside the write lock: no other writer can add an attempt between the count and the insert.
            if rule is not None:
                _raise_repeats(db, rows, rule)
            try:
                with db.atomic():  # a savepoint: a failed insert leaves nothing behind
                    db.conn.executemany(_INSERT, map(_values, rows))
            except sqlite3.IntegrityError:
                inserted = sum(self._insert_one(db, table, row) for row in rows)
            db.commit()
        except BaseException:
            db.rollback()
            raise
        return inserted

    def _insert_one(self, db: sqlite_utils.Database, table: sqlite_utils.db.Table, row: dict[str, Any]) -> int:
        """Insert one row whose ref may already be taken (1 in 2^40 per pair).

        The newcomer becomes "<ref>-2" (then -3...): refs stay unique, and the ref
        the pupil was shown still finds it by prefix.
        """
        base, suffix = row["ref"], 1
        while True:
            try:
                with db.atomic():
                    table.insert(row)
                return 1
            except sqlite3.IntegrityError:
                if db.execute("SELECT 1 FROM incidents WHERE ref = ?", [row["ref"]]).fetchone() is None:
                    log.exception("incident %r violates the schema; dropped", base)
                    self._count_dropped(1)
                    return 0
            suffix += 1
            log.warning("incident ref %s is taken; recording this incident as %s-%d", row["ref"], base, suffix)
            row = {**row, "ref": f"{base}-{suffix}"}

    def _count_dropped(self, count: int) -> None:
        with self._lock:
            self._dropped += count

    def _log_drops(self, at_once: bool = False) -> None:
        """Say how many incidents were dropped since last said: the first at once, then every _DROP_LOG_S."""
        dropped = self._dropped
        if dropped == self._dropped_logged:
            return
        now = time.monotonic()
        if self._dropped_logged and not at_once and now - self._drops_logged_at < _DROP_LOG_S:
            return
        log.error(
            "%d incidents dropped (more than %d held, malformed, or unwritable when stopping), %d in total since start",
            dropped - self._dropped_logged,
            self.max_held,
            dropped,
        )
        self._dropped_logged, self._drops_logged_at = dropped, now


def _call_each(callbacks: list[Callable[[], None]]) -> None:
    for callback in callbacks:
        try:
            callback()
        except Exception:  # one waiting flow gone wrong must not keep the others waiting
            log.exception("releasing a flow waiting for its incident failed")


def _raise_repeats(db: sqlite_utils.Database, rows: list[dict[str, Any]], rule: RepeatRule) -> None:
    """Give each row in `rows` that is a repeated attempt under `rule` at least the rule's severity.

    An attempt is counted with the attempts already in the database (any
    writer's, by an index on (username, ts_utc) or (client_ip, ts_utc)) and
    those earlier in this batch; attempts are rare, so this costs nothing for
    the ordinary blocked request.
    """
    attempts = [row for row in rows if rule.category in json.loads(row["categories"])]
    in_batch: dict[tuple[str, str], list[str]] = {}
    for row in attempts:
        in_batch.setdefault(_repeat_key(row), []).append(row["ts_utc"])
    for times in in_batch.values():
        times.sort()
    least = SEVERITIES.index(rule.severity)
    for row in attempts:
        if SEVERITIES.index(row["severity"]) >= least:
            continue
        column, key = _repeat_key(row)
        until = row["ts_utc"]
        since = utc_iso(datetime.fromisoformat(until) - rule.window)
        times = in_batch[column, key]
        count = bisect.bisect_right(times, until) - bisect.bisect_right(times, since)
        count += db.execute(
            f"""SELECT count(*) FROM incidents WHERE {column} = ? AND ts_utc > ? AND ts_utc <= ?
                AND EXISTS (SELECT 1 FROM json_each(incidents.categories) WHERE value = ?)""",
            [key, since, until, rule.category],
        ).fetchone()[0]
        if count >= rule.threshold:
            row["severity"] = rule.severity


def _repeat_key(row: dict[str, Any]) -> tuple[str, str]:
    """Whose attempts a row's are counted with: its user's, or for a request without one its address's."""
    return ("username", row["username"]) if row["username"] is not None else ("client_ip", row["client_ip"])
