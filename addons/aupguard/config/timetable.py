"""Decide: the school's timetable, as named windows of the week, and which one is in force.

A window is a name (`lessons`, `breaks`, `lunch`, ...) with spans of the week
in the school's local time. Windows never overlap, so at any moment at most
one is in force, and a group's `allow_during` / `block_during` rules cannot
contradict each other. On a holiday date the reserved window `holidays` is in
force all day and no other window is: term-time rules do not run in the holidays.

The policy is read once; a lookup is a time-zone conversion, a set probe for
the date and a bisect in that weekday's sorted spans.
"""

from __future__ import annotations

import bisect
import datetime as dt
import itertools
import re
import zoneinfo
from collections.abc import Iterable
from dataclasses import dataclass

from yaml.nodes import Node, ScalarNode

from aupguard.config.yamlfile import YamlDocument

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
HOLIDAYS = "holidays"  # the reserved window in force on holiday dates
WINDOW_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")
MINUTES_PER_DAY = 24 * 60
MAX_HOLIDAY_ENTRIES = 1000
MAX_HOLIDAY_DAYS = 366  # one entry; a longer range is a typo in a year
_ONE_MINUTE = dt.timedelta(minutes=1)
_CLOCK = re.compile(r"([01]\d|2[0-3]):([0-5]\d)|24:00")


@dataclass(frozen=True, slots=True)
class Span:
    window: str
    day: int  # 0 = Monday
    start: int  # minutes after local midnight
    end: int  # exclusive; up to 1440 (24:00)
    line: int  # where the policy file defines it


class Timetable:
    """Which named window is in force at a moment."""

    def __init__(self, zone: zoneinfo.ZoneInfo, spans: Iterable[Span], holidays: Iterable[dt.date] = ()):
        self.zone = zone
        self.holidays = frozenset(holidays)
        by_day: list[list[Span]] = [[] for _ in DAYS]
        for span in spans:
            by_day[span.day].append(span)
        for day in by_day:
            day.sort(key=lambda s: s.start)
        self.spans: tuple[tuple[Span, ...], ...] = tuple(tuple(day) for day in by_day)
        self._starts = tuple(tuple(s.start for s in day) for day in self.spans)
        self.windows = frozenset(s.window for day in self.spans for s in day) | {HOLIDAYS}
        self._minute: tuple[float, float, str | None] = (0.0, 0.0, None)  # (start, end, window) last answered

    @classmethod
    def empty(cls, zone: zoneinfo.ZoneInfo | None = None) -> Timetable:
        return cls(zone or zoneinfo.ZoneInfo("UTC"), ())

    def window_at(self, when: dt.datetime) -> str | None:
        """The window in force at `when` (a naive time is school-local), or None outside every window.

        The answer holds for a whole minute, so the last minute's is remembered: every request
        decided within it then costs a timestamp comparison instead of a time-zone conversion.
        """
        if when.tzinfo is None:
            return self._window_at_local(when.replace(tzinfo=self.zone))
        stamp = when.timestamp()
        start, end, window = self._minute
        if start <= stamp < end:
            return window
        local = when.astimezone(self.zone)
        window = self._window_at_local(local)
        # With a whole-minute UTC offset (every zone since the 1970s), local minutes are UTC minutes.
        offset = local.utcoffset()  # None only for a naive time, which `local` is not
        if offset is not None and offset % _ONE_MINUTE == dt.timedelta(0):
            start = stamp // 60 * 60
            self._minute = (start, start + 60, window)
        return window

    def _window_at_local(self, local: dt.datetime) -> str | None:
        if local.date() in self.holidays:
            return HOLIDAYS
        day = local.weekday()
        minute = local.hour * 60 + local.minute
        index = bisect.bisect_right(self._starts[day], minute) - 1
        if index >= 0:
            span = self.spans[day][index]
            if minute < span.end:
                return span.window
        return None


def read_timetable(doc: YamlDocument, node: Node | None, zone: zoneinfo.ZoneInfo) -> Timetable:
    """The policy's `timetable:` section. Fails with the line of any bad day, time, overlap or date."""
    if node is None or doc.is_null(node):
        return Timetable.empty(zone)
    fields = doc.fields(node, "timetable", optional=("windows", "holidays"))
    spans: list[Span] = []
    rule = "a window name (lower-case letters, digits and _)"
    for name, key, value in doc.named_items(fields.get("windows"), "timetable.windows", WINDOW_NAME, rule):
        where = f"timetable.windows.{name}"
        if name == HOLIDAYS:
            doc.fail(key, f"timetable.windows: {HOLIDAYS!r} is reserved: list holiday dates under timetable.holidays")
        items = doc.sequence(value, where)
        if not items:
            doc.fail(key, f"{where}: a window needs at least one `{{days: [...], from: ..., to: ...}}` entry")
        for item in items:
            spans.extend(_read_span(doc, item, name, where))
    _check_overlaps(doc, spans)
    return Timetable(zone, spans, _read_holidays(doc, fields.get("holidays")))


def _read_span(doc: YamlDocument, node: Node, window: str, where: str) -> list[Span]:
    entry = doc.fields(node, where, required=("days",), optional=("from", "to"))
    start = _clock(doc, entry.get("from"), f"{where}.from", 0)
    end = _clock(doc, entry.get("to"), f"{where}.to", MINUTES_PER_DAY)
    if start == MINUTES_PER_DAY:
        doc.fail(entry["from"], f"{where}.from: a window cannot start at 24:00")
    if end <= start:
        doc.fail(
            entry.get("to", node),
            f"{where}: `to` must be after `from` (split a window that crosses midnight into two entries)",
        )
    line = entry["days"].start_mark.line + 1
    return [Span(window, day, start, end, line) for day in _days(doc, entry["days"], f"{where}.days")]


def _clock(doc: YamlDocument, node: Node | None, where: str, default: int) -> int:
    if node is None:
        return default
    if isinstance(node, ScalarNode) and node.tag == "tag:yaml.org,2002:int" and ":" in node.value:
        doc.fail(node, f'{where}: put times in quotes ("{node.value}"): YAML reads {node.value} as a number')
    text = doc.text(node, where).strip()
    match = _CLOCK.fullmatch(text)
    if not match:
        doc.fail(node, f'{where}: {text!r} is not a 24-hour time such as "08:50"')
    return MINUTES_PER_DAY if text == "24:00" else int(match.group(1)) * 60 + int(match.group(2))


def _days(doc: YamlDocument, node: Node, where: str) -> list[int]:
    """Day names (`mon` ... `sun`) and ranges (`mon-fri`); a single name or range may stand alone."""
    items = [node] if isinstance(node, ScalarNode) else doc.sequence(node, where)
    if not items:
        doc.fail(node, f"{where}: name at least one day")
    days: list[int] = []
    for item in items:
        text = doc.text(item, where).strip().lower()
        first, _, last = text.partition("-")
        try:
            a = DAYS.index(first)
            b = DAYS.index(last) if last else a
        except ValueError:
            doc.fail(item, f"{where}: {text!r} is not a day or range of days (mon, tue, ..., sun; mon-fri)")
        if b < a:
            doc.fail(item, f"{where}: {text!r} runs backwards (write the days of a week from mon to sun)")
        for day in range(a, b + 1):
            if day in days:
                doc.fail(item, f"{where}: {DAYS[day]} is named twice")
            days.append(day)
    return days


def _check_overlaps(doc: YamlDocument, spans: list[Span]) -> None:
    by_day: dict[int, list[Span]] = {}
    for span in spans:
        by_day.setdefault(span.day, []).append(span)
    for day, day_spans in by_day.items():
        day_spans.sort(key=lambda s: (s.start, s.line))
        for before, after in itertools.pairwise(day_spans):
            if after.start < before.end:
                # Blame the later line in the file: usually the one just added.
                first, second = sorted((before, after), key=lambda s: s.line)
                doc.fail_at(
                    second.line,
                    f"timetable.windows.{second.window}: {_hhmm(second.start)}-{_hhmm(second.end)} on {DAYS[day]} "
                    f"overlaps {first.window} {_hhmm(first.start)}-{_hhmm(first.end)} (line {first.line}); "
                    "windows must not overlap, so that one is in force at a time",
                )


def _hhmm(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def _read_holidays(doc: YamlDocument, node: Node | None) -> frozenset[dt.date]:
    """Dates (`2026-12-25`) and inclusive ranges (`{from: 2026-10-26, to: 2026-10-30}`)."""
    items = doc.sequence(node, "timetable.holidays")
    if len(items) > MAX_HOLIDAY_ENTRIES:
        doc.fail(node, f"timetable.holidays: more than {MAX_HOLIDAY_ENTRIES} entries")
    dates: set[dt.date] = set()
    for item in items:
        if isinstance(item, ScalarNode):
            first = last = _date(doc, item, "timetable.holidays")
        else:
            entry = doc.fields(item, "timetable.holidays", required=("from", "to"), optional=("name",))
            first = _date(doc, entry["from"], "timetable.holidays: from")
            last = _date(doc, entry["to"], "timetable.holidays: to")
            if last < first:
                doc.fail(entry["to"], "timetable.holidays: `to` is before `from`")
            if (last - first).days >= MAX_HOLIDAY_DAYS:
                doc.fail(entry["to"], f"timetable.holidays: a range longer than {MAX_HOLIDAY_DAYS} days")
        dates.update(first + dt.timedelta(days=n) for n in range((last - first).days + 1))
    return frozenset(dates)


def _date(doc: YamlDocument, node: Node, where: str) -> dt.date:
    # YAML reads 2026-10-26 as a date and fails on 2026-13-01 without a line: parse the text ourselves.
    timestamp = isinstance(node, ScalarNode) and node.tag == "tag:yaml.org,2002:timestamp"
    text = node.value if timestamp else doc.text(node, where)
    try:
        return dt.date.fromisoformat(text.strip())
    except ValueError:
        doc.fail(node, f"{where}: {text!r} is not a date such as 2026-10-26")
