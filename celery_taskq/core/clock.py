"""The time source every service and loop takes: :data:`Clock`, and :func:`utc_now` by default.

Tests inject their own clock (a function returning an aware datetime); nothing else reads the
wall clock for the tables' times.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

Clock = Callable[[], datetime]
"""A function returning the current time, timezone-aware, in UTC."""


def utc_now() -> datetime:
    """The current time, timezone-aware, in UTC."""
    return datetime.now(UTC)
