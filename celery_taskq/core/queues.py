"""Named queues, priorities and limits of handler runs: what each may be, parsed and checked.

Every way in (``enqueue``, the command line, the HTTP API, ``runner --queues``, settings)
checks with these functions, so each refuses the same things with the same message. Nothing
here reads or writes the database.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from celery_taskq.core.exceptions import InvalidArgumentError
from celery_taskq.core.models import MAX_PRIORITY, MIN_PRIORITY, QUEUE_NAME_MAX_LENGTH

QUEUE_NAME_PATTERN = re.compile(r"[A-Za-z0-9_.\-]+")
"""The characters a queue name may hold."""


def check_queue_name(name: Any) -> str:
    """Return ``name`` if it can name a queue, else refuse it saying why.

    A queue name is 1 to :data:`~celery_taskq.core.models.QUEUE_NAME_MAX_LENGTH` characters
    among ASCII letters, digits, ``_``, ``-`` and ``.``: it appears in settings
    (``TASKQ_CONCURRENCY``), command lines and metric labels as it is.
    """
    if not isinstance(name, str):
        raise InvalidArgumentError(f"queue must be a string, not {type(name).__name__}")
    if not name:
        raise InvalidArgumentError("queue must not be empty")
    if len(name) > QUEUE_NAME_MAX_LENGTH:
        raise InvalidArgumentError(
            f"queue must be at most {QUEUE_NAME_MAX_LENGTH} characters, not {len(name)}"
        )
    if QUEUE_NAME_PATTERN.fullmatch(name) is None:
        raise InvalidArgumentError(
            f"queue {name!r} may hold only ASCII letters, digits, '_', '-' and '.'"
        )
    return name


def check_priority(priority: Any) -> int:
    """Return ``priority`` if it is an integer from ``MIN_PRIORITY`` to ``MAX_PRIORITY``."""
    if (
        isinstance(priority, bool)
        or not isinstance(priority, int)
        or not MIN_PRIORITY <= priority <= MAX_PRIORITY
    ):
        raise InvalidArgumentError(
            f"priority must be an integer from {MIN_PRIORITY} to {MAX_PRIORITY} "
            f"(higher runs first), not {priority!r}"
        )
    return priority


def parse_queue_list(text: str) -> tuple[str, ...]:
    """The queues of a comma-separated list (``"a,b"``), each checked, without repeats."""
    names = [part.strip() for part in text.split(",")]
    if not any(names):
        raise InvalidArgumentError("give at least one queue name (a comma-separated list)")
    checked: list[str] = []
    for name in names:
        if not name:
            raise InvalidArgumentError(f"empty queue name in {text!r}")
        if check_queue_name(name) not in checked:
            checked.append(name)
    return tuple(checked)


QUEUE_LIMIT_PREFIX = "queue:"
HANDLER_LIMIT_PREFIX = "handler:"

RATE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
"""Units of a rate limit's period."""

_RATE = re.compile(r"(\d+)\s*/\s*(\d*)\s*([smhd])")


@dataclass(frozen=True)
class LimitSpec:
    """One declared limit: at most ``max_running`` runs at once, and at most ``rate_count``
    runs started per window of ``rate_period`` seconds (windows counted from the Unix epoch);
    ``None`` where that kind of limit is not declared."""

    max_running: int | None = None
    rate_count: int | None = None
    rate_period: int | None = None


def limit_name(key: str) -> str:
    """The ``TaskqLimits.Name`` of a settings key: ``reports`` or ``queue:reports`` is the
    queue's, ``handler:myapp.Export`` the handler's."""
    key = key.strip()
    if key.startswith(HANDLER_LIMIT_PREFIX):
        handler = key.removeprefix(HANDLER_LIMIT_PREFIX).strip()
        if not handler or len(handler) > 255 or any(char.isspace() for char in handler):
            raise ValueError(f"{key!r} does not name a handler (handler:<dotted path>)")
        return HANDLER_LIMIT_PREFIX + handler
    queue = key.removeprefix(QUEUE_LIMIT_PREFIX).strip()
    try:
        return QUEUE_LIMIT_PREFIX + check_queue_name(queue)
    except InvalidArgumentError as exc:
        raise ValueError(f"{key!r} is not a queue (or handler:<dotted path>): {exc}") from None


def _entries(text: str, what: str, example: str) -> list[tuple[str, str]]:
    entries: list[tuple[str, str]] = []
    seen: set[str] = set()
    for part in (piece.strip() for piece in text.split(",")):
        if not part:
            continue
        key, equals, value = part.rpartition("=")
        if not equals or not key.strip() or not value.strip():
            raise ValueError(f"{part!r} is not valid: write NAME={what}, for example {example}")
        name = limit_name(key)
        if name in seen:
            raise ValueError(f"{key.strip()!r} is given twice")
        seen.add(name)
        entries.append((name, value.strip()))
    return entries


def parse_rate(text: str) -> tuple[int, int]:
    """``10/m`` or ``100/15m`` → (runs, period in seconds)."""
    match = _RATE.fullmatch(text.strip().lower())
    if match is None:
        raise ValueError(
            f"rate {text!r} is not valid: write RUNS/PERIOD with a unit of s, m, h or d, "
            "for example 10/m or 100/15m"
        )
    count, amount, unit = int(match.group(1)), int(match.group(2) or 1), match.group(3)
    if count < 1 or amount < 1:
        raise ValueError(f"rate {text!r} is not valid: runs and period must be more than 0")
    return count, amount * RATE_UNITS[unit]


def parse_limits(concurrency: str, rate_limits: str) -> dict[str, LimitSpec]:
    """The limits of ``TASKQ_CONCURRENCY`` (``reports=2,handler:myapp.Export=1``) and
    ``TASKQ_RATE_LIMITS`` (``handler:myapp.Export=10/m``), by ``TaskqLimits.Name``.

    Raises ``ValueError`` naming the part that is wrong.
    """
    running: dict[str, int] = {}
    for name, value in _entries(concurrency, "RUNS", "reports=2,handler:myapp.Export=1"):
        if not value.isdigit() or int(value) < 1 or int(value) > 1_000_000:
            raise ValueError(
                f"concurrency {value!r} of {name} is not valid: write a whole number of 1 or more"
            )
        running[name] = int(value)
    rates = {
        name: parse_rate(value)
        for name, value in _entries(rate_limits, "RUNS/PERIOD", "handler:myapp.Export=10/m")
    }
    return {
        name: LimitSpec(
            max_running=running.get(name),
            rate_count=rates[name][0] if name in rates else None,
            rate_period=rates[name][1] if name in rates else None,
        )
        for name in sorted({*running, *rates})
    }
