"""The incident log: schema and file modes, the writer thread, retention. Real SQLite files in tmp_path."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import subprocess
import sys
import threading
import tracemalloc
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aupguard.core.incident import Incident, RepeatRule, new_ref
from aupguard.store import incidents
from aupguard.store.db import connect_private
from aupguard.store.incidents import IncidentWriter, SchemaError, open_db, purge
from conftest import INCIDENT_TIME, make_incident, mode

NOW = INCIDENT_TIME
SECRETISH = ("password", "passwd", "pwd", "secret")


def refs(path: Path) -> list[str]:
    with sqlite3.connect(path) as conn:
        return [row[0] for row in conn.execute("SELECT ref FROM incidents")]


@pytest.fixture
def open_umask():
    """Create files with umask 0, so a 0600 mode proves aupguard asked for it."""
    old = os.umask(0)
    yield
    os.umask(old)


# -- Incident and refs ----------------------------------------------------------------------------


def test_new_ref_is_readable_and_unambiguous():
    made = {new_ref() for _ in range(2000)}
    assert len(made) == 2000
    for ref in made:
        assert len(ref) == 12 and ref[:3] == "AG-" and ref[7] == "-"
        body = ref[3:7] + ref[8:]
        assert set(body) <= set("23456789ABCDEFGHJKLMNPQRSTUVWXYZ")
    # every symbol is used: the ref really carries 40 random bits
    assert set("".join(r[3:7] + r[8:] for r in made)) == set("23456789ABCDEFGHJKLMNPQRSTUVWXYZ")


def test_incident_rejects_naive_time_unknown_action_and_severity():
    with pytest.raises(ValueError, match="timezone"):
        make_incident(ts_utc=datetime(2025, 1, 1, 12))
    with pytest.raises(ValueError, match="action"):
        make_incident(action="deny")
    with pytest.raises(ValueError, match="severity"):
        make_incident(severity="urgent")


def test_incident_time_is_normalised_to_utc():
    london_summer = timezone(timedelta(hours=1))
    incident = make_incident(ts_utc=datetime(2025, 6, 1, 9, 0, tzinfo=london_summer), categories=["adult"])
    assert incident.ts_utc == datetime(2025, 6, 1, 8, 0, tzinfo=UTC)
    assert incident.ts_utc.utcoffset() == timedelta(0)
    assert incident.categories == ("adult",)


# -- open_db: schema and modes --------------------------------------------------------------------


def test_open_db_creates_private_files_wal_and_schema(tmp_path, open_umask):
    path = tmp_path / "var" / "sub" / "incidents.db"
    db = open_db(path)
    assert mode(path.parent) == 0o700
    assert mode(path) == 0o600
    assert db.journal_mode == "wal"
    assert db.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    assert db.execute("PRAGMA busy_timeout").fetchone()[0] >= 1000

    columns = db["incidents"].columns_dict
    assert list(columns) == [
        "ref", "ts_utc", "local_date", "local_time", "client_ip", "username", "user_group", "method", "url",
        "url_sha256", "url_length", "host", "categories", "category", "rule", "action", "severity",
        "user_agent", "search_term", "technique", "inner_url",
    ]  # fmt: skip
    assert columns["url_length"] is int
    assert db["incidents"].pks == ["ref"]
    assert not [c for c in columns if any(word in c.lower() for word in SECRETISH)]
    indexed = {tuple(index.columns) for index in db["incidents"].indexes}
    pairs = {("username", "ts_utc"), ("client_ip", "ts_utc")}  # the repeat count's lookups
    assert indexed == {("ref",), ("ts_utc",), ("category",), ("severity",), *pairs}
    assert db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == "2"

    # SQLite gives the WAL the database file's mode
    db["incidents"].insert(incidents._row(make_incident()))
    assert mode(path.with_name("incidents.db-wal")) == 0o600
    db.close()


def test_open_db_is_idempotent_and_tightens_an_existing_file(tmp_path):
    path = tmp_path / "incidents.db"
    db = open_db(path)
    db["incidents"].insert(incidents._row(make_incident(ref="AG-AAAA-AAAA")))
    db.close()
    os.chmod(path, 0o644)
    db = open_db(path)
    assert mode(path) == 0o600
    assert [r["ref"] for r in db["incidents"].rows] == ["AG-AAAA-AAAA"]
    assert db.execute("SELECT count(*) FROM meta").fetchone()[0] == 1
    db.close()


def test_open_db_leaves_an_existing_directory_alone(tmp_path):
    os.chmod(tmp_path, 0o755)
    open_db(tmp_path / "incidents.db").close()
    assert mode(tmp_path) == 0o755
    assert mode(tmp_path / "incidents.db") == 0o600


def test_a_version_1_database_gains_the_repeat_indexes_and_keeps_its_rows(tmp_path):
    path = tmp_path / "incidents.db"
    with sqlite3.connect(path) as conn:  # what aupguard with schema version 1 made
        db = incidents.sqlite_utils.Database(conn)
        incidents._create_v1(db)
        db["meta"].create({"key": str, "value": str}, pk="key")
        db["meta"].insert({"key": "schema_version", "value": "1"})
        db["incidents"].insert(incidents._row(make_incident(ref="AG-AAAA-AAAA")))
    db = open_db(path)
    assert db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == "2"
    indexed = {tuple(index.columns) for index in db["incidents"].indexes}
    assert ("username", "ts_utc") in indexed and ("client_ip", "ts_utc") in indexed
    assert ("username",) not in indexed and ("client_ip",) not in indexed  # covered by the pairs
    assert [r["ref"] for r in db["incidents"].rows] == ["AG-AAAA-AAAA"]
    plan = db.execute(
        "EXPLAIN QUERY PLAN SELECT count(*) FROM incidents WHERE client_ip = ? AND ts_utc > ? AND ts_utc <= ?",
        ["10.0.0.5", "a", "b"],
    ).fetchall()
    assert "idx_incidents_client_ip_ts_utc" in str(plan)
    db.close()


def test_opening_the_database_again_keeps_the_writers_locks(tmp_path):
    """The feedback app opens the database in the proxy process. Opening (and closing) a second descriptor on
    the file used to drop the writer's POSIX locks: the next outside connection then unlinked the WAL
    the writer went on appending to, and its incidents were lost."""
    path = tmp_path / "incidents.db"
    with IncidentWriter(path) as writer:
        writer.submit(make_incident())
        writer.flush()
        open_db(path).close()
        outside = "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); c.execute('SELECT * FROM meta'); c.close()"
        subprocess.run([sys.executable, "-c", outside, str(path)], check=True, timeout=60)  # checkpoints on close
        later = make_incident()
        writer.submit(later)
        writer.flush()
        assert later.ref in refs(path)
        assert path.with_name("incidents.db-wal").exists()


def test_open_db_refuses_a_newer_schema(tmp_path):
    path = tmp_path / "incidents.db"
    open_db(path).execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(SchemaError, match="99"):
        open_db(path)


# -- rows: bounds, hashes, credentials ------------------------------------------------------------


def test_long_fields_are_bounded_but_the_full_url_is_hashed(tmp_path):
    url = "http://example.org/" + "a" * 5000
    row = incidents._row(
        make_incident(url=url, user_agent="U" * 2000, search_term="s" * 1000, inner_url="http://x/" + "b" * 3000)
    )
    assert row["url"] == url[:2048]
    assert row["url_length"] == len(url)
    assert row["url_sha256"] == hashlib.sha256(url.encode()).hexdigest()
    assert len(row["user_agent"]) == 512 and len(row["search_term"]) == 256 and len(row["inner_url"]) == 2048


def test_credentials_in_urls_are_not_stored():
    row = incidents._row(
        make_incident(url="https://bob:hunter2@mail.example/inbox?x=1", inner_url="ftp://u:p@files.example/f")
    )
    assert row["url"] == "https://mail.example/inbox?x=1"
    assert row["inner_url"] == "ftp://files.example/f"
    assert "hunter2" not in json.dumps(row)


def test_categories_are_json_with_the_primary_first():
    row = incidents._row(make_incident(categories=("self_harm", "forums")))
    assert json.loads(row["categories"]) == ["self_harm", "forums"] and row["category"] == "self_harm"
    assert incidents._row(make_incident(categories=()))["category"] is None


def stored_text(path: Path, incident: Incident) -> tuple[str, ...]:
    """(url, username, user_agent, search_term, host) of `incident` once the writer's batch insert stored it."""
    db = open_db(path)
    try:
        assert IncidentWriter(path)._insert(db, [incidents._row(incident)]) == 1
        return db.execute(
            "SELECT url, username, user_agent, search_term, host FROM incidents WHERE ref = ?", [incident.ref]
        ).fetchone()
    finally:
        db.close()


# Bounds of the stored columns (url, username, user_agent, search_term, host), as the schema documents them.
BOUNDS = (2048, 256, 512, 256, 255)
VALID_TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=3000)  # no lone surrogates


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=3000))
def test_any_text_is_stored_within_its_bounds(tmp_path, text):
    """Untrusted text, lone surrogates and NULs included, never fails the writer's batch insert."""
    incident = make_incident(url=text, username=text, user_agent=text, search_term=text, host=text)
    stored = stored_text(tmp_path / "prop.db", incident)
    assert all(len(value) <= bound for value, bound in zip(stored, BOUNDS))
    assert not any("\ud800" <= ch <= "\udfff" for value in stored for ch in value)


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=VALID_TEXT)
def test_valid_text_reads_back_as_given_up_to_its_bound(tmp_path, text):
    url = "http://example.org/" + text  # in the path: there are no credentials to cut
    incident = make_incident(url=url, username=text, user_agent=text, search_term=text, host=text)
    assert stored_text(tmp_path / "prop.db", incident) == (url[:2048], text[:256], text[:512], text[:256], text[:255])


def test_a_lone_surrogate_is_stored_as_the_replacement_character(tmp_path):
    incident = make_incident(url="http://example.org/a\ud800b", username="x\udfffy", host="h\udc00.example")
    stored = stored_text(tmp_path / "one.db", incident)
    assert stored == ("http://example.org/a\ufffdb", "x\ufffdy", "Mozilla/5.0", None, "h\ufffd.example")


@given(user=st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="/?#"), max_size=100))
def test_credentials_of_any_shape_are_cut_from_a_url(user):
    row = incidents._row(make_incident(url=f"https://{user}@mail.example/inbox?x=1"))
    assert row["url"] == "https://mail.example/inbox?x=1"


# -- the writer -----------------------------------------------------------------------------------


def test_concurrent_submits_are_all_written_once(tmp_path):
    path = tmp_path / "incidents.db"
    submitted: list[list[str]] = [[] for _ in range(5)]
    with IncidentWriter(path) as writer:

        def pupil(n: int) -> None:
            for i in range(2000):
                incident = make_incident(client_ip=f"10.0.{n}.1", url=f"http://example.org/{n}/{i}")
                writer.submit(incident)
                submitted[n].append(incident.ref)

        threads = [threading.Thread(target=pupil, args=(n,)) for n in range(5)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    stored = refs(path)
    assert len(stored) == 10_000 and sorted(stored) == sorted(ref for batch in submitted for ref in batch)
    assert writer.written == 10_000 and writer.dropped == 0


def test_close_writes_what_was_just_submitted(tmp_path):
    path = tmp_path / "incidents.db"
    writer = IncidentWriter(path)
    writer.start()
    made = [make_incident() for _ in range(7)]
    for incident in made:
        writer.submit(incident)
    writer.close()
    assert sorted(refs(path)) == sorted(i.ref for i in made)
    assert not writer._thread.is_alive()
    with pytest.raises(RuntimeError, match="closed"):
        writer.submit(make_incident())


def test_flush_makes_incidents_visible_to_other_connections(tmp_path):
    path = tmp_path / "incidents.db"
    with IncidentWriter(path) as writer:
        incident = make_incident()
        writer.submit(incident)
        writer.flush()
        assert refs(path) == [incident.ref]
        writer.submit(make_incident())
        writer.flush()
        assert len(refs(path)) == 2


def test_an_incident_is_released_once_committed_and_not_before(tmp_path):
    """Group commit: a lone incident is written at once, and its release sees it in the database."""
    path = tmp_path / "incidents.db"
    seen: list[list[str]] = []
    released = threading.Event()

    def release() -> None:
        seen.append(refs(path))  # another connection: only what is committed
        released.set()

    with IncidentWriter(path) as writer:
        incident = make_incident()
        assert writer.submit(incident, release)
        assert released.wait(10)
    assert seen == [[incident.ref]]


def test_incidents_submitted_while_the_writer_is_busy_go_in_one_batch(tmp_path):
    path = tmp_path / "incidents.db"
    writer = IncidentWriter(path)
    writer.start()
    batches: list[int] = []
    insert = writer._insert
    writer._insert = lambda db, rows: batches.append(len(rows)) or insert(db, rows)
    entered, gate = stall_inserts(writer)
    writer.submit(make_incident())
    assert entered.wait(10)
    for _ in range(300):
        writer.submit(make_incident())
    gate.set()
    writer.close()
    assert batches == [1, 300] and len(refs(path)) == 301


def test_submit_before_start_raises(tmp_path):
    with pytest.raises(RuntimeError, match="new"):
        IncidentWriter(tmp_path / "x.db").submit(make_incident())


def test_start_fails_loudly_when_the_database_cannot_be_opened(tmp_path):
    (tmp_path / "file").write_text("not a directory")
    writer = IncidentWriter(tmp_path / "file" / "incidents.db")
    with pytest.raises(OSError):
        writer.start()
    assert not writer._thread.is_alive()


def stall_inserts(writer: IncidentWriter) -> tuple[threading.Event, threading.Event]:
    """Make the writer's inserts wait: `entered` is set when one starts, which goes on once `gate` is set."""
    entered, gate = threading.Event(), threading.Event()
    insert = writer._insert

    def stalled_insert(db, rows):
        entered.set()
        gate.wait()
        return insert(db, rows)

    writer._insert = stalled_insert
    return entered, gate


def test_overflow_drops_counts_and_logs_without_blocking(tmp_path, caplog):
    path = tmp_path / "incidents.db"
    writer = IncidentWriter(path, max_held=11)
    writer.start()
    entered, gate = stall_inserts(writer)
    writer.submit(make_incident())
    assert entered.wait(10)  # the writer is busy with the first incident; the queue is empty
    accepted = [writer.submit(make_incident()) for _ in range(15)]  # 10 fit, 5 do not: none may block
    assert accepted == [True] * 10 + [False] * 5
    assert writer.dropped == 5
    with caplog.at_level(logging.ERROR, logger="aupguard.store.incidents"):
        gate.set()
        writer.close()
    assert len(refs(path)) == 11 and writer.written == 11
    assert any("5 incidents dropped" in r.getMessage() for r in caplog.records)


def test_queued_incidents_hold_only_their_bounded_fields(tmp_path):
    """A flood of huge blocked requests waiting for the writer costs the queue a few KB each, not their size."""
    path = tmp_path / "incidents.db"
    writer = IncidentWriter(path, max_batch=1)
    writer.start()
    entered, gate = stall_inserts(writer)
    writer.submit(make_incident())
    assert entered.wait(10)  # the writer is stalled: everything submitted now stays queued
    flood, huge_url, huge_agent = 40, 64 * 1024, 1024 * 1024
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for number in range(flood):
            # Fresh strings each time, dropped by the test once submitted: only the queue can keep them.
            writer.submit(
                make_incident(url=f"http://example.org/{number}/" + "a" * huge_url, user_agent="U" * huge_agent)
            )
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    gate.set()
    writer.close()
    assert held < flood * 16 * 1024  # the url (2,048) and user_agent (512) bounds, with room for the rest
    assert len(refs(path)) == flood + 1


def fail_inserts(writer: IncidentWriter) -> threading.Event:
    """Make the writer's inserts fail as on a full disk until the returned event is set."""
    fixed = threading.Event()
    insert = writer._insert

    def full_disk_insert(db, rows):
        if not fixed.is_set():
            raise sqlite3.OperationalError("database or disk is full")
        return insert(db, rows)

    writer._insert = full_disk_insert
    return fixed


def test_an_unwritable_database_releases_at_once_holds_the_incidents_and_writes_them_later(tmp_path, caplog):
    path = tmp_path / "incidents.db"
    writer = IncidentWriter(path, retry_interval=0.01)
    writer.start()
    fixed = fail_inserts(writer)
    released = threading.Semaphore(0)
    made = [make_incident() for _ in range(50)]
    with caplog.at_level(logging.WARNING, logger="aupguard.store.incidents"):
        for incident in made:
            assert writer.submit(incident, released.release)
        for _ in made:
            assert released.acquire(timeout=10)  # every page goes out though nothing is written
        assert refs(path) == [] and writer.held == 50 and writer.dropped == 0
        with pytest.raises(TimeoutError):
            writer.flush(timeout=0.2)
        fixed.set()
        writer.flush()
        writer.close()
    assert sorted(refs(path)) == sorted(i.ref for i in made)
    assert writer.held == 0 and writer.dropped == 0 and writer.written == 50
    messages = [r.getMessage() for r in caplog.records]
    assert sum("INCIDENTS ARE NOT BEING WRITTEN" in m for m in messages) == 1  # once, however many tries
    assert sum("can be written again" in m for m in messages) == 1
    assert [r.levelno for r in caplog.records if "NOT BEING WRITTEN" in r.getMessage()] == [logging.CRITICAL]


def test_beyond_the_bound_incidents_are_dropped_counted_and_said_and_the_held_ones_survive(tmp_path, caplog):
    path = tmp_path / "incidents.db"
    writer = IncidentWriter(path, max_held=20, retry_interval=0.01)
    writer.start()
    fixed = fail_inserts(writer)
    made = [make_incident() for _ in range(25)]
    with caplog.at_level(logging.ERROR, logger="aupguard.store.incidents"):
        accepted = [writer.submit(incident) for incident in made]
        assert accepted == [True] * 20 + [False] * 5
        fixed.set()
        writer.close()
    assert sorted(refs(path)) == sorted(i.ref for i in made[:20]) and writer.dropped == 5
    assert any("5 incidents dropped" in r.getMessage() for r in caplog.records)


def test_a_writer_stopping_while_the_database_stays_unwritable_says_what_is_lost(tmp_path, caplog):
    path = tmp_path / "incidents.db"
    writer = IncidentWriter(path, retry_interval=0.05)
    writer.start()
    fail_inserts(writer)
    with caplog.at_level(logging.ERROR, logger="aupguard.store.incidents"):
        writer.submit(make_incident())
        writer.submit(make_incident())
        writer.close(timeout=1)
    assert writer.dropped == 2 and refs(path) == []
    assert any("2 incidents are lost" in r.getMessage() for r in caplog.records)


def test_a_colliding_ref_gets_a_suffix_instead_of_failing_the_batch(tmp_path):
    path = tmp_path / "incidents.db"
    with IncidentWriter(path) as writer:
        first = make_incident(ref="AG-AAAA-BBBB", url="http://first.example/")
        writer.submit(first)
        writer.flush()
        others = [make_incident() for _ in range(20)]
        for incident in [*others[:10], make_incident(ref="AG-AAAA-BBBB", url="http://second.example/"), *others[10:]]:
            writer.submit(incident)
        writer.submit(make_incident(ref="AG-AAAA-BBBB", url="http://third.example/"))
    db = open_db(path)
    by_ref = {r["ref"]: r["url"] for r in db.query("SELECT ref, url FROM incidents WHERE ref LIKE 'AG-AAAA-BBBB%'")}
    assert by_ref == {
        "AG-AAAA-BBBB": "http://first.example/",
        "AG-AAAA-BBBB-2": "http://second.example/",
        "AG-AAAA-BBBB-3": "http://third.example/",
    }
    assert db["incidents"].count == 23 and writer.written == 23


def test_two_writers_share_one_database(tmp_path):
    """Several proxy workers write to one file: the busy timeout and IMMEDIATE transactions serialise them."""
    path = tmp_path / "incidents.db"
    with IncidentWriter(path, max_batch=7) as one, IncidentWriter(path, max_batch=11) as two:
        made = [make_incident() for _ in range(3000)]
        for n, incident in enumerate(made):
            (one if n % 2 else two).submit(incident)
    assert sorted(refs(path)) == sorted(i.ref for i in made)


# -- repeated attempts: raised as they are recorded -----------------------------------------------

REPEATS = RepeatRule("circumvention", timedelta(minutes=10), 3)


def attempt(minute: float, **fields) -> Incident:
    """A circumvention attempt `minute` minutes after NOW, by alice at 10.0.0.5 unless `fields` say otherwise."""
    values = dict(ts_utc=NOW + timedelta(minutes=minute), categories=("circumvention", "anonymizers"))
    return make_incident(**{"severity": "medium", **values, **fields})


def severities(path: Path, made: list[Incident]) -> list[str]:
    with sqlite3.connect(path) as conn:
        stored = dict(conn.execute("SELECT ref, severity FROM incidents"))
    return [stored[incident.ref] for incident in made]


@pytest.mark.parametrize("one_batch", [True, False], ids=["one-batch", "batch-each"])
def test_the_attempt_reaching_the_threshold_and_later_ones_become_high(tmp_path, one_batch):
    path = tmp_path / "incidents.db"
    made = [
        attempt(0),
        attempt(1, username="bob"),  # another user on the same device: counted for bob
        attempt(2),
        make_incident(ts_utc=NOW + timedelta(minutes=3)),  # no circumvention: not counted
        attempt(4),  # alice's third within 10 minutes
        attempt(5, severity="critical"),  # never lowered
        attempt(13),  # 0 has left the window; 2, 4, 5 and 13 are in it
        attempt(30),  # alone in its window
    ]
    with IncidentWriter(path, repeat_rule=REPEATS, max_batch=1 if not one_batch else 100) as writer:
        for incident in reversed(made) if one_batch else made:  # a batch's order is not time order
            writer.submit(incident)
            if not one_batch:
                writer.flush()
    assert severities(path, made) == ["medium", "medium", "medium", "medium", "high", "critical", "high", "medium"]


def test_without_a_user_the_attempts_of_one_address_are_counted(tmp_path):
    path = tmp_path / "incidents.db"
    made = [attempt(0, username=None), attempt(1, username=None, client_ip="10.0.0.6"), attempt(2, username=None)]
    made.append(attempt(3, username=None))
    with IncidentWriter(path, repeat_rule=REPEATS) as writer:
        for incident in made:
            writer.submit(incident)
    assert severities(path, made) == ["medium", "medium", "medium", "high"]


def test_writers_sharing_one_database_count_each_others_attempts(tmp_path):
    """Proxy workers each have a writer: one pupil's attempts spread over them still add up."""
    path = tmp_path / "incidents.db"
    made = [attempt(minute) for minute in range(4)]
    with IncidentWriter(path, repeat_rule=REPEATS) as one, IncidentWriter(path, repeat_rule=REPEATS) as two:
        for writer, incident in zip((one, two, one, two), made):
            writer.submit(incident)
            writer.flush()
    assert severities(path, made) == ["medium", "medium", "high", "high"]


def test_a_new_rule_applies_from_the_next_batch_and_no_rule_raises_nothing(tmp_path):
    path = tmp_path / "incidents.db"
    made = [attempt(minute) for minute in range(4)]
    with IncidentWriter(path) as writer:
        for incident in made[:3]:
            writer.submit(incident)
        writer.flush()
        writer.repeat_rule = REPEATS  # a policy reload: the attempts already recorded still count
        writer.submit(made[3])
    assert severities(path, made) == ["medium", "medium", "medium", "high"]


def test_a_program_that_forgets_close_still_writes_and_exits(tmp_path):
    path = tmp_path / "incidents.db"
    script = f"""
import sys
sys.path[:0] = {[str(Path(__file__).parent)]!r}
from pathlib import Path
from aupguard.store.incidents import IncidentWriter
from conftest import make_incident
writer = IncidentWriter(Path({str(path)!r}))
writer.start()
for _ in range(25):
    writer.submit(make_incident())
"""
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
    assert len(refs(path)) == 25


# -- retention ------------------------------------------------------------------------------------


def test_purge_deletes_only_incidents_older_than_the_retention(tmp_path):
    db = open_db(tmp_path / "incidents.db")
    ages = {"AG-0000-0001": 40, "AG-0000-0002": 31, "AG-0000-0003": 30, "AG-0000-0004": 29, "AG-0000-0005": 0}
    for ref, days in ages.items():
        db["incidents"].insert(incidents._row(make_incident(ref=ref, ts_utc=NOW - timedelta(days=days))))
    assert purge(db, 30, now=NOW) == 2
    assert sorted(r["ref"] for r in db["incidents"].rows) == ["AG-0000-0003", "AG-0000-0004", "AG-0000-0005"]
    assert purge(db, 30, now=NOW) == 0
    with pytest.raises(ValueError):
        purge(db, -1, now=NOW)
    with pytest.raises(ValueError, match="timezone"):
        purge(db, 1, now=NOW.replace(tzinfo=None))


def test_purge_defaults_to_now(tmp_path):
    db = open_db(tmp_path / "incidents.db")
    old = make_incident(ts_utc=datetime.now(UTC) - timedelta(days=400))
    db["incidents"].insert_all(
        [incidents._row(old), incidents._row(replace(old, ref=new_ref(), ts_utc=datetime.now(UTC)))]
    )
    assert purge(db, 365) == 1 and db["incidents"].count == 1


def test_a_store_opened_while_another_connection_writes_waits_for_it(tmp_path):
    """Two proxy workers opening one new store at once: the journal-mode change waits, as writes do."""
    path = tmp_path / "exemptions.db"
    writer = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    writer.execute("CREATE TABLE t (x)")
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("INSERT INTO t VALUES (1)")
    threading.Timer(0.5, lambda: writer.execute("COMMIT")).start()
    db = connect_private(path)  # "database is locked" at once before
    try:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        db.close()
        writer.close()
