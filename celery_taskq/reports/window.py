"""The report window and the arguments every section checks: times, durations back from now,
the handler filter and the row limit.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from celery_taskq.core.exceptions import InvalidArgumentError
from celery_taskq.reports.limits import MAX_LIMIT


def utc_now() -> datetime:
    """The current time, timezone-aware UTC (the default ``now`` of a report)."""
    return datetime.now(UTC)


@dataclass(frozen=True)
class ReportWindow:
    """A half-open time window ``since <= t < until``; ``None`` leaves that side open."""

    since: datetime | None = None
    until: datetime | None = None

    def __post_init__(self) -> None:
        for name in ("since", "until"):
            moment = getattr(self, name)
            if moment is not None and (not isinstance(moment, datetime) or moment.tzinfo is None):
                raise InvalidArgumentError(f"{name} must be a timezone-aware datetime")
        if self.since is not None and self.until is not None and self.since >= self.until:
            raise InvalidArgumentError(
                f"since ({self.since.isoformat()}) must be before until ({self.until.isoformat()})"
            )


_DURATION_PART = re.compile(r"(\d+)([smhdw])", re.IGNORECASE)
DURATION = re.compile(r"(?:\d+[smhdw])+", re.IGNORECASE)
"""A duration as text: ``90s``, ``30m``, ``24h``, ``7d``, ``2w``, ``1h30m``."""
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_moment(value: str) -> datetime | timedelta:
    """An ISO 8601 time with a UTC offset, or a duration back from now (``24h``, ``1h30m``).

    Units: ``s``, ``m``, ``h``, ``d``, ``w``. Resolve a duration with :func:`resolve_moment`.
    """
    text_value = value.strip()
    if DURATION.fullmatch(text_value):
        seconds = sum(
            int(number) * _UNIT_SECONDS[unit.lower()]
            for number, unit in _DURATION_PART.findall(text_value)
        )
        return timedelta(seconds=seconds)
    try:
        parsed = datetime.fromisoformat(text_value)
    except ValueError:
        raise InvalidArgumentError(
            f"{value!r} is neither an ISO 8601 time nor a duration like 24h, 30m or 7d"
        ) from None
    if parsed.tzinfo is None:
        raise InvalidArgumentError(
            f"{value!r} has no UTC offset: write it like 2026-01-31T08:00:00Z or +02:00"
        )
    return parsed.astimezone(UTC)


def resolve_moment(value: datetime | timedelta | None, now: datetime) -> datetime | None:
    """A parsed moment as a time: a duration counts back from ``now``."""
    if isinstance(value, timedelta):
        return now - value
    return value


def check_limit(limit: int) -> int:
    """``limit`` if it is a whole number from 1 to :data:`MAX_LIMIT`."""
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise InvalidArgumentError(f"limit must be an integer from 1 to {MAX_LIMIT}")
    return limit


def check_handler(handler: str | None) -> str | None:
    """``handler`` if it is ``None`` or a non-empty ``TaskHandlerClass``."""
    if handler is not None and (not isinstance(handler, str) or not handler):
        raise InvalidArgumentError("handler must be a non-empty TaskHandlerClass")
    return handler


def check_now(now: datetime | None) -> datetime:
    """``now`` in UTC (default: the current time); it must be timezone-aware."""
    if now is None:
        return utc_now()
    if not isinstance(now, datetime) or now.tzinfo is None:
        raise InvalidArgumentError("now must be a timezone-aware datetime")
    return now.astimezone(UTC)
