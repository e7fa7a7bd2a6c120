"""What both databases can store: text without NUL, valid Unicode, 32-bit counts, UTC times,
and JSON no deeper than every reader can show.

Every way in (the API, the command line, HTTP) goes through :mod:`celery_taskq.core.intake`, which
asks these questions before a row is written, so a value one database would refuse (PostgreSQL
text holds no NUL; no driver encodes a lone surrogate) is refused on both with a clear
:class:`~celery_taskq.core.exceptions.InvalidTaskError` instead of a driver error.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

MAX_INT32 = 2**31 - 1
"""Largest value of a 32-bit ``INTEGER`` column such as ``MaxRetries``."""

MAX_JSON_DEPTH = 100
"""Most levels of nested objects and lists in task data (``{"a": [1]}`` has 2).

Not a setting: the tools every reader uses (``json``, pydantic, Jinja) recurse, so a document
much deeper than this cannot be shown whole. Readers show this many levels of any stored
document and mark the rest (:mod:`celery_taskq.reports.shown`)."""


def text_problem(value: str) -> str | None:
    """Why ``value`` cannot be stored as text, or ``None`` if it can."""
    if "\x00" in value:
        return "must not contain NUL characters"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "must be valid Unicode text"
    return None


def json_problem(document: Any) -> str | None:
    """Why a JSON document cannot be stored (a string or key :func:`text_problem` refuses)."""
    pending = [document]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            problem = text_problem(item)
            if problem is not None:
                return f"has a string that {problem}"
        elif isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return None


def deeper_than(document: Any, max_depth: int) -> bool:
    """Whether ``document`` nests objects and lists (or tuples) more than ``max_depth`` deep.

    Walks without recursion and stops at the first level too deep, so a document nested past
    the interpreter's recursion limit, or one that contains itself, is answered too.
    """
    containers = (dict, list, tuple)
    pending = [(document, 1)] if isinstance(document, containers) else []
    while pending:
        item, depth = pending.pop()
        children = item.values() if isinstance(item, dict) else item
        if depth > max_depth:
            return True
        pending.extend((child, depth + 1) for child in children if isinstance(child, containers))
    return False


def time_problem(value: datetime) -> str | None:
    """Why an aware time cannot be stored in UTC (it overflows once converted), or ``None``."""
    try:
        value.astimezone(UTC)
    except OverflowError:
        return "is out of range once converted to UTC"
    return None
