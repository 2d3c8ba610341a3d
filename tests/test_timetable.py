"""The timetable: named windows of the school week in local time, holidays, and mistakes reported by line."""

from __future__ import annotations

import itertools
from datetime import UTC, date, datetime
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aupguard.config.loader import load_policy
from aupguard.config.timetable import HOLIDAYS, Span, Timetable
from policy_cases import BASE, assert_refused, edit_once, write

LONDON = ZoneInfo("Europe/London")
UTC = UTC

TIMETABLE = """\
timetable:
  windows:
    lessons:
      - {days: mon-fri, from: "08:50", to: "10:50"}
      - {days: [mon, tue, wed, thu, fri], from: "11:10", to: "15:20"}
    breaks:
      - {days: mon-fri, from: "10:50", to: "11:10"}
    evening:
      - {days: [fri], from: "18:00", to: "24:00"}
    night:
      - {days: sun, from: "00:30", to: "03:00"}
    weekends:
      - {days: sat}
      - {days: sun, from: "03:00"}
  holidays:
    - {from: 2026-10-26, to: 2026-10-30, name: half term}
    - 2026-12-25
    - "2027-01-01"
"""
TIMED = (
    BASE.replace("groups:\n", TIMETABLE + "groups:\n", 1)
    .replace(
        "    block: [adult]\n",
        "    block: [adult, social_networks]\n    allow_during:\n      breaks: [social_networks]\n",
        1,
    )
    .replace(
        "  adult: {label: adult sites, severity: low,",
        "  adult: {mandatory: true, label: adult sites, severity: low,",
        1,
    )
)


def timed_edit(old: str, new: str) -> str:
    return edit_once(TIMED, old, new)


@pytest.fixture(scope="module")
def table(tmp_path_factory) -> Timetable:
    return load_policy(write(tmp_path_factory.mktemp("timed"), TIMED)).timetable


# -- which window is in force ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("local", "window"),
    [
        ("2026-11-23 08:49", None),  # a Monday, before school
        ("2026-11-23 08:50", "lessons"),  # `from` is inclusive
        ("2026-11-23 10:49", "lessons"),
        ("2026-11-23 10:50", "breaks"),  # `to` is exclusive: the next window starts
        ("2026-11-23 11:10", "lessons"),
        ("2026-11-23 15:19", "lessons"),
        ("2026-11-23 15:20", None),
        ("2026-11-27 23:59", "evening"),  # to: "24:00" runs to midnight
        ("2026-11-28 00:00", "weekends"),
        ("2026-11-29 00:29", None),
        ("2026-11-29 00:30", "night"),
        ("2026-11-29 03:00", "weekends"),
        ("2026-11-29 23:59", "weekends"),
        ("2026-10-26 09:00", HOLIDAYS),  # half term: a Monday, but no lessons
        ("2026-10-30 23:59", HOLIDAYS),  # ranges include their last day
        ("2026-10-31 12:00", "weekends"),
        ("2026-12-25 10:55", HOLIDAYS),
        ("2027-01-01 10:55", HOLIDAYS),  # a quoted date reads the same
    ],
)
def test_window_in_force(table, local, window):
    when = datetime.fromisoformat(local)
    assert table.window_at(when) == window  # naive: school-local
    assert table.window_at(when.replace(tzinfo=LONDON).astimezone(UTC)) == window  # the same instant in UTC


def test_times_are_the_schools_local_time(table):
    # 08:00 UTC is 08:00 in London in winter (GMT) and 09:00 in summer (BST).
    assert table.window_at(datetime(2026, 11, 23, 8, 0, tzinfo=UTC)) is None
    assert table.window_at(datetime(2026, 7, 6, 8, 0, tzinfo=UTC)) == "lessons"
    # An instant given in another zone is converted, not read as local wall-clock time.
    assert table.window_at(datetime(2026, 11, 23, 9, 0, tzinfo=ZoneInfo("Asia/Tokyo"))) is None  # 00:00 GMT


def test_dst_change_days(table):
    # 29 March 2026: at 01:00 UTC London jumps from 01:00 GMT to 02:00 BST.
    assert table.window_at(datetime(2026, 3, 29, 0, 59, tzinfo=UTC)) == "night"  # 00:59 GMT
    assert table.window_at(datetime(2026, 3, 29, 1, 0, tzinfo=UTC)) == "night"  # 02:00 BST
    assert table.window_at(datetime(2026, 3, 29, 1, 59, tzinfo=UTC)) == "night"  # 02:59 BST
    assert table.window_at(datetime(2026, 3, 29, 2, 0, tzinfo=UTC)) == "weekends"  # 03:00 BST
    # 25 October 2026: 01:00-02:00 local happens twice; both are inside the window.
    assert table.window_at(datetime(2026, 10, 25, 0, 30, tzinfo=UTC)) == "night"  # 01:30 BST
    assert table.window_at(datetime(2026, 10, 25, 1, 30, tzinfo=UTC)) == "night"  # 01:30 GMT
    assert table.window_at(datetime(2026, 10, 25, 2, 59, tzinfo=UTC)) == "night"  # 02:59 GMT
    assert table.window_at(datetime(2026, 10, 25, 3, 0, tzinfo=UTC)) == "weekends"  # 03:00 GMT
    # The Monday after each change, lessons start at 08:50 local whatever the UTC offset.
    assert table.window_at(datetime(2026, 3, 30, 7, 50, tzinfo=UTC)) == "lessons"
    assert table.window_at(datetime(2026, 11, 2, 8, 50, tzinfo=UTC)) == "lessons"  # after half term


def test_no_timetable_means_no_window(tmp_path):
    policy = load_policy(write(tmp_path, BASE))
    assert policy.timetable.window_at(datetime(2026, 11, 23, 9, 0, tzinfo=UTC)) is None
    assert policy.timetable.windows == {HOLIDAYS}


# -- the lookup against a plain reference, over random timetables and instants ------------------------------


def reference_window(spans: list[Span], holidays: set[date], when: datetime) -> str | None:
    local = when.astimezone(LONDON)
    if local.date() in holidays:
        return HOLIDAYS
    minute = local.hour * 60 + local.minute
    found = [s.window for s in spans if s.day == local.weekday() and s.start <= minute < s.end]
    assert len(found) <= 1
    return found[0] if found else None


@st.composite
def timetables(draw):
    spans = []
    for day in range(7):
        cuts = sorted(draw(st.sets(st.integers(0, 1440), max_size=8)))
        for start, end in zip(cuts[::2], cuts[1::2]):  # disjoint by construction
            spans.append(Span(draw(st.sampled_from(["lessons", "breaks", "lunch"])), day, start, end, 1))
    holidays = draw(st.sets(st.dates(date(2025, 1, 1), date(2027, 12, 31)), max_size=20))
    return spans, holidays


@settings(max_examples=300, deadline=None)
@given(
    timetables(),
    st.datetimes(datetime(2025, 1, 1), datetime(2027, 12, 31), timezones=st.just(UTC)),
)
def test_lookup_matches_a_linear_scan(drawn, when):
    spans, holidays = drawn
    table = Timetable(LONDON, spans, holidays)
    assert table.window_at(when) == reference_window(spans, holidays, when)


@settings(max_examples=200, deadline=None)
@given(st.datetimes(datetime(2020, 1, 1), datetime(2035, 12, 31), timezones=st.just(UTC)))
def test_the_loaded_timetable_matches_a_linear_scan(table, when):
    spans = [span for day in table.spans for span in day]
    assert table.window_at(when) == reference_window(spans, set(table.holidays), when)


# -- mistakes, each named by line --------------------------------------------------------------------

BROKEN = [
    ("overlap", '      - {days: mon-fri, from: "10:50", to: "11:10"}', '      - {days: mon-fri, from: "10:40", to: "11:10"}  # x', "10:40", r"^timetable.windows.breaks: 10:40-11:10 on mon overlaps lessons 08:50-10:50 \(line \d+\); windows must not overlap"),
    ("overlap-same-window", '      - {days: [mon, tue, wed, thu, fri], from: "11:10"', '      - {days: [mon, tue, wed, thu, fri], from: "10:00"', '"10:00"', r"^timetable.windows.lessons: 10:00-15:20 on mon overlaps lessons 08:50-10:50"),
    ("overlap-weekend", "      - {days: sat}", "      - {days: [fri, sat]}", "[fri, sat]", r"^timetable.windows.weekends: 00:00-24:00 on fri overlaps lessons"),
    ("backwards", 'to: "10:50"}', 'to: "08:00"}', '"08:00"', r"^timetable.windows.lessons: `to` must be after `from` \(split a window that crosses midnight"),
    ("unquoted-time", 'from: "11:10", to: "15:20"', 'from: 11:10, to: "15:20"', "from: 11:10,", r"^timetable.windows.lessons.from: put times in quotes \(\"11:10\"\)"),
    ("bad-time", 'to: "15:20"', 'to: "3.20pm"', "3.20pm", r"^timetable.windows.lessons.to: '3.20pm' is not a 24-hour time"),
    ("bad-hour", 'to: "15:20"', 'to: "25:00"', "25:00", r"is not a 24-hour time"),
    ("bad-day", "{days: sat}", "{days: saturday}", "saturday", r"^timetable.windows.weekends.days: 'saturday' is not a day or range of days"),
    ("bad-range", "{days: mon-fri, from: \"10:50\"", "{days: fri-mon, from: \"10:50\"", "fri-mon", r"'fri-mon' runs backwards"),
    ("day-twice", "{days: [fri], from", "{days: [fri, fri], from", "[fri, fri]", r"fri is named twice"),
    ("window-name", "    evening:\n", "    Evening!:\n", "Evening!", r"'Evening!' is not a window name"),
    ("reserved", "    evening:\n", "    holidays:\n", "    holidays:", r"'holidays' is reserved"),
    ("empty-window", "    evening:\n      - {days: [fri], from: \"18:00\", to: \"24:00\"}\n", "    evening: []\n", "evening: []", r"a window needs at least one"),
    ("span-key", "{days: sat}", "{day: sat}", "{day: sat}", r"unknown key 'day' \(did you mean 'days'\?\)"),
    ("holiday-date", "    - 2026-12-25", "    - 2026-13-25", "2026-13-25", r"^timetable.holidays: '2026-13-25' is not a date"),
    ("holiday-order", "{from: 2026-10-26, to: 2026-10-30", "{from: 2026-10-30, to: 2026-10-26", "2026-10-30, to", r"`to` is before `from`"),
    ("holiday-long", "to: 2026-10-30, name", "to: 2036-10-30, name", "2036", r"a range longer than 366 days"),
    ("timetable-key", "  holidays:\n", "  holiday:\n", "  holiday:", r"^timetable: unknown key 'holiday' \(did you mean 'holidays'\?\)"),
    ("rule-window", "      breaks: [social_networks]", "      brakes: [social_networks]", "brakes", r"^groups.staff.allow_during: unknown window 'brakes' \(did you mean 'breaks'\?\) \(timetable.windows defines: breaks, evening, holidays, lessons, night, weekends\)"),
    ("rule-category", "      breaks: [social_networks]", "      breaks: [social_netwerks]", "social_netwerks", r"^groups.staff.allow_during.breaks: unknown category 'social_netwerks'"),
    ("rule-not-blocked", "      breaks: [social_networks]", "      breaks: [games]", "[games]", r"^groups.staff.allow_during.breaks: games is not in groups.staff.block, so there is nothing to lift"),
    ("rule-mandatory", "      breaks: [social_networks]", "      breaks: [adult]", "[adult]", r"^groups.staff.allow_during.breaks: adult is mandatory \(blocked for everyone\): it cannot be allowed"),
    ("block-during-twice", "      breaks: [social_networks]\n", "      breaks: [social_networks]\n    block_during:\n      lessons: [adult]\n", "lessons: [adult]", r"^groups.staff.block_during.lessons: adult is already blocked at all times"),
    ("both-during", "      breaks: [social_networks]\n", "      breaks: [social_networks]\n    block_during:\n      breaks: [social_networks]  # x\n", "# x", r"already blocked at all times|both allowed and blocked"),
]  # fmt: skip


@pytest.mark.parametrize(("old", "new", "marker", "reason"), [c[1:] for c in BROKEN], ids=[c[0] for c in BROKEN])
def test_broken_timetable_names_line_and_reason(tmp_path, old, new, marker, reason):
    assert_refused(tmp_path, timed_edit(old, new), marker, reason)


def test_spans_are_sorted_and_disjoint_after_load(table):
    # Sorted once at load, so a lookup only bisects.
    for day in table.spans:
        assert [s.start for s in day] == sorted(s.start for s in day)
        assert all(a.end <= b.start for a, b in itertools.pairwise(day))
