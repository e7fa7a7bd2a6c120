"""When a schedule's slots fall: an interval, or a crontab in a timezone (pure; no database).

* **Interval** slots are the multiples of the interval since the Unix epoch (UTC), so every
  beat computes the same slots whatever its start time.
* **Crontab** slots are wall-clock times in the schedule's timezone matching five fields,
  ``minute hour day-of-month month day-of-week`` (``*``, numbers, ``a-b``, ``*/n``, ``a-b/n``,
  lists, and ``jan``-``dec`` / ``sun``-``sat``; Sunday is 0 or 7). As in Celery's ``crontab``,
  a day must match both day fields. Across a DST change a crontab fires once per wall-clock
  slot: a wall time that occurs twice (the repeated hour) fires at its first occurrence only,
  and a wall time that does not exist (the skipped hour) does not fire at all.

Celery's own ``crontab`` cannot be used here (the core never imports Celery), and computing
on wall-clock times with :mod:`zoneinfo` keeps the DST rules above exact and ours.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from celery_taskq.core.exceptions import InvalidArgumentError

CRONTAB_FIELDS = ("minute", "hour", "day_of_month", "month_of_year", "day_of_week")
"""The five fields in order, named as Celery's ``crontab`` names its arguments."""

_RANGES = {
    "minute": (0, 59),
    "hour": (0, 23),
    "day_of_month": (1, 31),
    "month_of_year": (1, 12),
    "day_of_week": (0, 6),
}
_NAMES = {
    "month_of_year": {
        name: number
        for number, name in enumerate(
            ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"),
            start=1,
        )
    },
    "day_of_week": {
        name: number
        for number, name in enumerate(("sun", "mon", "tue", "wed", "thu", "fri", "sat"))
    },
}

SEARCH_DAYS = 366 * 5
"""How far ahead a crontab's next slot is searched; one that never fires within it is refused."""

MAX_COUNTED_SLOTS = 100_000
"""Missed slots are counted up to this many (a crontab counted slot by slot)."""


@dataclass(frozen=True)
class Crontab:
    """A parsed five-field crontab: the values each field allows."""

    text: str
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    days_of_month: frozenset[int]
    months: frozenset[int]
    days_of_week: frozenset[int]

    def day_matches(self, day: date) -> bool:
        """Whether ``day`` (a local date) has slots."""
        return (
            day.month in self.months
            and day.day in self.days_of_month
            and (day.isoweekday() % 7) in self.days_of_week
        )


def _field_values(field: str, text: str) -> set[int]:
    low, high = _RANGES[field]
    names = _NAMES.get(field, {})
    values: set[int] = set()

    if field == "day_of_week":
        high = 7  # Sunday is 0 or 7

    def number(token: str) -> int:
        token = token.strip().lower()
        if token in names:
            return names[token]
        if not token.isdigit():
            raise InvalidArgumentError(f"crontab {field} {text!r}: {token!r} is not a number")
        value = int(token)
        if not low <= value <= high:
            raise InvalidArgumentError(f"crontab {field} {text!r}: {value} is outside {low}-{high}")
        return value

    for part in text.split(","):
        part = part.strip()
        if not part:
            raise InvalidArgumentError(f"crontab {field} {text!r}: an empty list item")
        base, slash, step_text = part.partition("/")
        step = 1
        if slash:
            if not step_text.isdigit() or int(step_text) < 1:
                raise InvalidArgumentError(
                    f"crontab {field} {text!r}: the step {step_text!r} is not a positive number"
                )
            step = int(step_text)
        if base == "*":
            first, last = low, high
        elif "-" in base:
            start, _, end = base.partition("-")
            first, last = number(start), number(end)
            if first > last:
                raise InvalidArgumentError(f"crontab {field} {text!r}: {base!r} runs backwards")
        else:
            first = number(base)
            last = high if slash else first
        values.update(range(first, last + 1, step))
    if field == "day_of_week":
        return {value % 7 for value in values}
    return values


def parse_crontab(spec: str | Mapping[str, Any]) -> Crontab:
    """Parse a five-field crontab string, or a mapping shaped like Celery's ``crontab``
    arguments (missing keys are ``*``); raise :class:`InvalidArgumentError` if it is not one."""
    if isinstance(spec, Mapping):
        unknown = set(spec) - set(CRONTAB_FIELDS)
        if unknown:
            raise InvalidArgumentError(
                f"unknown crontab keys: {', '.join(sorted(map(str, unknown)))}"
                f" (known: {', '.join(CRONTAB_FIELDS)})"
            )
        parts = [str(spec.get(field, "*")).replace(" ", "") for field in CRONTAB_FIELDS]
    elif isinstance(spec, str):
        parts = spec.split()
    else:
        raise InvalidArgumentError(f"a crontab must be a string or a mapping, not {spec!r}")
    if len(parts) != len(CRONTAB_FIELDS):
        raise InvalidArgumentError(
            f"crontab {' '.join(parts)!r} must have five fields: minute hour day-of-month "
            "month day-of-week"
        )
    values = {
        field: _field_values(field, part) for field, part in zip(CRONTAB_FIELDS, parts, strict=True)
    }
    return Crontab(
        text=" ".join(parts),
        minutes=tuple(sorted(values["minute"])),
        hours=tuple(sorted(values["hour"])),
        days_of_month=frozenset(values["day_of_month"]),
        months=frozenset(values["month_of_year"]),
        days_of_week=frozenset(values["day_of_week"]),
    )


def parse_timezone(name: str) -> ZoneInfo:
    """The zone named ``name`` (an IANA name such as ``Europe/Paris``), or a clear refusal."""
    if not isinstance(name, str) or not name or len(name) > 64 or "\x00" in name:
        raise InvalidArgumentError(f"timezone {name!r} is not an IANA zone name")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidArgumentError(
            f"unknown timezone {name!r}: give an IANA name such as 'Europe/Paris' or 'UTC'"
        ) from None


def _wall_to_utc(wall: datetime, zone: ZoneInfo) -> datetime | None:
    """The first instant a naive wall time occurs in ``zone``; ``None`` if it never does."""
    instant = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
    if instant.astimezone(zone).replace(tzinfo=None) != wall:
        return None  # the wall time falls in a gap (the hour skipped by a DST change)
    return instant


@dataclass(frozen=True)
class Timing:
    """A schedule's timing: ``interval`` seconds, or a ``crontab`` in ``zone``."""

    interval: int | None
    crontab: Crontab | None
    zone: ZoneInfo

    def next_after(self, instant: datetime) -> datetime:
        """The first slot strictly after ``instant`` (aware), in UTC."""
        if self.crontab is None:
            step = self.interval or 1
            seconds = int(instant.timestamp() // step + 1) * step
            return datetime.fromtimestamp(seconds, UTC)
        found = _next_cron_slot(self.crontab, self.zone, instant)
        if found is None:
            raise InvalidArgumentError(
                f"crontab {self.crontab.text!r} has no slot within {SEARCH_DAYS} days"
            )
        return found

    def due_slots(self, first: datetime, now: datetime) -> tuple[int, datetime | None]:
        """How many slots fall in ``[first, now]`` (``first`` being a slot), and the latest."""
        if first > now:
            return 0, None
        if self.interval is not None:
            count = int((now.timestamp() - first.timestamp()) // self.interval) + 1
            latest = first + timedelta(seconds=(count - 1) * self.interval)
            return count, latest
        count, latest = 1, first
        while count < MAX_COUNTED_SLOTS:
            following = self.next_after(latest)
            if following > now:
                return count, latest
            count, latest = count + 1, following
        # Counted as far as allowed: find the latest slot from a window just before ``now``.
        for window in _LATEST_SLOT_WINDOWS:
            candidate = self.next_after(max(latest, now - window))
            if candidate <= now:
                while (following := self.next_after(candidate)) <= now:
                    candidate = following
                return count, candidate
        return count, latest


_LATEST_SLOT_WINDOWS = tuple(timedelta(days=days) for days in (1 / 24, 1, 32, 367, SEARCH_DAYS))


def _next_cron_slot(crontab: Crontab, zone: ZoneInfo, instant: datetime) -> datetime | None:
    start = instant.astimezone(zone).replace(tzinfo=None)
    # Wall times this far before ``start`` cannot be later instants, even across a DST change.
    earliest_wall = start - timedelta(hours=3)
    day = earliest_wall.date()
    for _ in range(SEARCH_DAYS):
        if crontab.day_matches(day):
            for hour in crontab.hours:
                if datetime.combine(day, time(hour, 59)) < earliest_wall:
                    continue
                for minute in crontab.minutes:
                    wall = datetime.combine(day, time(hour, minute))
                    if wall < earliest_wall:
                        continue
                    slot = _wall_to_utc(wall, zone)
                    if slot is not None and slot > instant:
                        return slot
        day += timedelta(days=1)
    return None


def make_timing(
    *, interval: int | None, crontab: str | Mapping[str, Any] | None, timezone: str
) -> Timing:
    """A checked :class:`Timing`: exactly one of ``interval`` (whole seconds, 1 or more) and
    ``crontab``, and a known ``timezone``."""
    zone = parse_timezone(timezone)
    if (interval is None) == (crontab is None):
        raise InvalidArgumentError("a schedule needs exactly one of an interval and a crontab")
    if interval is not None:
        if isinstance(interval, bool) or not isinstance(interval, int) or interval < 1:
            raise InvalidArgumentError(
                f"the interval must be a whole number of seconds, 1 or more, not {interval!r}"
            )
        if interval > 10 * 366 * 86400:
            raise InvalidArgumentError(f"the interval {interval} s is longer than ten years")
        return Timing(interval, None, zone)
    timing = Timing(None, parse_crontab(crontab or ""), zone)
    timing.next_after(datetime(2000, 1, 1, tzinfo=UTC))  # refuses a crontab that never fires
    return timing
