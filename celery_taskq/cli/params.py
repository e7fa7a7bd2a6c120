"""Reusable click parameter types: JSON documents, times (an instant or a duration from now),
seconds and task ids."""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Any, cast

import click

from celery_taskq.core.exceptions import TaskqError
from celery_taskq.core.storage.decoding import loads_json
from celery_taskq.reports import window
from celery_taskq.reports.window import DURATION, parse_moment

MAX_ID = 2**63 - 1
"""The largest id a database stores (a signed 64-bit integer)."""

TASK_ID = click.IntRange(1, MAX_ID)
"""A TaskQueue id: an integer that can be one."""


class JsonParamType(click.ParamType):  # type: ignore[type-arg]
    """A JSON document given as text."""

    name = "json"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if not isinstance(value, str):
            return value
        try:
            return loads_json(value)
        except ValueError as exc:
            self.fail(f"{value!r} is not valid JSON: {exc}", param, ctx)
        except RecursionError:
            self.fail("the JSON document is nested too deeply", param, ctx)


class MomentParamType(click.ParamType):  # type: ignore[type-arg]
    """A time: ISO 8601 with a UTC offset (``2026-01-31T08:00:00Z``), or a duration such as
    ``90s``, ``30m``, ``24h``, ``7d``, ``2w`` or ``1h30m`` counted back from now (``ahead``:
    forward from now, for a due time).

    Every option that takes a time uses it. The value is a ``datetime`` or a ``timedelta``;
    :meth:`resolve` turns it into a time, so that options of one command share one ``now``.
    """

    name = "time"

    def __init__(self, *, ahead: bool = False) -> None:
        self.ahead = ahead

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> datetime | timedelta:
        if isinstance(value, datetime | timedelta):
            return value
        try:
            moment = parse_moment(str(value))
            self.resolve(moment, window.utc_now())  # a duration past year 1 or 9999 is refused
        except TaskqError as exc:
            message = str(exc)
            if self.ahead:
                message = message.replace("a duration like", "a duration from now like")
            self.fail(message, param, ctx)
        except (OverflowError, ValueError):
            self.fail(f"{value!r} is out of range in UTC", param, ctx)
        return moment

    def resolve(self, moment: datetime | timedelta | None, now: datetime) -> datetime | None:
        """``moment`` as an aware time: a duration counts back from ``now`` (forward when
        ``ahead``)."""
        if isinstance(moment, timedelta):
            return now + moment if self.ahead else now - moment
        return moment


SINCE = MomentParamType()
"""A time, or a duration back from now (``--since``, ``--until``)."""

DUE = MomentParamType(ahead=True)
"""A time, or a duration forward from now (``enqueue --at``)."""


class SecondsParamType(click.FloatRange):
    """A finite number of seconds (``2.5``) or a duration (``90s``, ``5m``, ``1h30m``), at least
    ``minimum`` (``nan`` and ``inf`` are refused)."""

    name = "seconds"

    def __init__(self, minimum: float = 0, *, min_open: bool = False) -> None:
        super().__init__(min=minimum, min_open=min_open)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str):
            if DURATION.fullmatch(value.strip()):
                try:
                    value = cast(timedelta, parse_moment(value)).total_seconds()
                except OverflowError:
                    self.fail(f"{value!r} is out of range", param, ctx)
            else:
                try:
                    float(value)
                except ValueError:
                    self.fail(
                        f"{value!r} is neither a number of seconds nor a duration like 90s, 5m "
                        "or 1h30m",
                        param,
                        ctx,
                    )
        seconds = super().convert(value, param, ctx)
        if not math.isfinite(seconds):
            self.fail(f"{value!r} is not a finite number of seconds", param, ctx)
        return seconds


class WholeSecondsParamType(click.IntRange):
    """A whole number of seconds (``300``) or a duration (``5m``, ``1h30m``), at least
    ``minimum``."""

    name = "seconds"

    def __init__(self, minimum: int = 1) -> None:
        super().__init__(min=minimum)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str) and DURATION.fullmatch(value.strip()):
            try:
                value = int(cast(timedelta, parse_moment(value)).total_seconds())
            except OverflowError:
                self.fail(f"{value!r} is out of range", param, ctx)
        elif isinstance(value, str) and not value.strip().lstrip("+-").isdigit():
            self.fail(
                f"{value!r} is neither a whole number of seconds nor a duration like 90s, 5m "
                "or 1h30m",
                param,
                ctx,
            )
        return super().convert(value, param, ctx)
