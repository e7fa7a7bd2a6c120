"""Reusable click parameter types: JSON documents, aware date-times, seconds and task ids."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

import click

from celery_taskq.core.storage.decoding import loads_json

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


class AwareDateTimeParamType(click.ParamType):  # type: ignore[type-arg]
    """An ISO 8601 date and time with a UTC offset, e.g. ``2026-01-31T08:00:00Z``."""

    name = "iso8601"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> datetime:
        if isinstance(value, datetime):
            return value
        try:
            parsed = datetime.fromisoformat(str(value))
        except ValueError:
            self.fail(f"{value!r} is not an ISO 8601 date and time", param, ctx)
        if parsed.tzinfo is None:
            self.fail(
                f"{value!r} has no UTC offset: write it like 2026-01-31T08:00:00Z or +02:00",
                param,
                ctx,
            )
        try:
            parsed.astimezone(UTC)
        except OverflowError:
            self.fail(f"{value!r} is out of range in UTC", param, ctx)
        return parsed


class SecondsParamType(click.FloatRange):
    """A finite number of seconds, at least ``minimum`` (``nan`` and ``inf`` are refused)."""

    name = "seconds"

    def __init__(self, minimum: float = 0) -> None:
        super().__init__(min=minimum)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        seconds = super().convert(value, param, ctx)
        if not math.isfinite(seconds):
            self.fail(f"{value!r} is not a finite number of seconds", param, ctx)
        return seconds
