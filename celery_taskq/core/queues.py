"""Named queues and priorities of handler runs: what a queue name and a priority may be.

Every way in (``enqueue``, the command line, the HTTP API, ``runner --queues``, settings)
checks with these functions, so each refuses the same things with the same message.
"""

from __future__ import annotations

import re
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
