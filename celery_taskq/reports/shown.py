"""Stored values made safe to show: bounded in depth and size, valid text, and marked where cut.

Every reader (the dashboard's pages, the HTTP API, the command line's ``show`` and ``list``,
metrics) shows snapshots through these functions, so any stored value renders, whoever wrote
it: a document nested thousands deep, tens of MiB of text, lone surrogates, ``NaN``, numbers
out of range. What is left out is marked where it was:

- a string cut: ``… [truncated: 12,345,678 more characters]`` at its end;
- an object or list deeper than :data:`SHOWN_MAX_DEPTH`: ``[nested too deep]`` in its place;
- a document past its size budget: ``… [truncated: 3 more items]`` as a list's last item, or
  a ``"…"`` key saying how many keys were left out of an object;
- a lone surrogate: U+FFFD. ``NaN`` and infinities: the strings ``"NaN"``, ``"Infinity"``.

Only what is shown changes; :func:`celery_taskq.get_task`, a program's own read, returns the
stored values (decoded by :mod:`celery_taskq.core.storage.decoding`).
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Any, TypeVar

from celery_taskq.core.listing import TaskPage
from celery_taskq.core.snapshots import RelatedTask, RunSnapshot, TaskSnapshot, TaskSummary
from celery_taskq.core.storage.storable import MAX_JSON_DEPTH

SHOWN_MAX_DEPTH = MAX_JSON_DEPTH
"""Levels of nested objects and lists shown: all that any intake accepts."""

SHOWN_MAX_CHARS = 1024 * 1024
"""Characters shown of one document or text (about its compact JSON size for a document).

At least every default write limit (task data, results, each output stream: 1 MiB), so what
this version writes with its defaults is shown whole."""

SHOWN_SHORT_MAX_CHARS = 255
"""Characters shown of a ``varchar(255)`` column (handler, title, error code …)."""

TOO_DEEP = "[nested too deep]"
"""What an object or list deeper than :data:`SHOWN_MAX_DEPTH` is shown as."""

CUT_KEY = "…"
"""The key that says how many keys of an object were left out."""

_SURROGATE = re.compile("[\ud800-\udfff]")

_Task = TypeVar("_Task", bound=TaskSummary)


def cut_marker(count: int, what: str) -> str:
    """The mark of ``count`` left-out characters, items or keys."""
    return f"… [truncated: {count:,} more {what}]"


def shown_text(value: Any, max_chars: int = SHOWN_MAX_CHARS) -> str:
    """``value`` as text of at most ``max_chars`` characters (plus the mark), valid Unicode."""
    text: str
    if isinstance(value, str):
        text = value
    elif isinstance(value, bytes):
        text = value.decode("utf-8", "replace")
    else:
        text = str(value)
    if len(text) > max_chars:
        text = text[:max_chars] + cut_marker(len(text) - max_chars, "characters")
    if _SURROGATE.search(text) is not None:
        text = _SURROGATE.sub("\ufffd", text)
    return text


def shown_optional_text(value: Any, max_chars: int = SHOWN_MAX_CHARS) -> str | None:
    """:func:`shown_text`, keeping ``None``."""
    return None if value is None else shown_text(value, max_chars)


@dataclass
class _Open:
    """A container being copied: what is left of its source, its copy, its depth."""

    items: Any
    copy: dict[str, Any] | list[Any]
    depth: int
    left: int


def shown_json(
    value: Any, *, max_depth: int = SHOWN_MAX_DEPTH, max_chars: int = SHOWN_MAX_CHARS
) -> Any:
    """A copy of a JSON value that any JSON tool can render (see the module's docstring).

    Walks without recursion, so a document of any depth is answered; the size budget counts
    about one character per character of compact JSON.
    """
    budget = max_chars
    open_containers: list[_Open] = []

    def copy_of(item: Any, depth: int) -> Any:
        nonlocal budget
        if isinstance(item, dict | list | tuple):
            if depth > max_depth:
                budget -= len(TOO_DEEP)
                return TOO_DEEP
            budget -= 2
            copy: dict[str, Any] | list[Any] = {} if isinstance(item, dict) else []
            if item:
                items = iter(item.items()) if isinstance(item, dict) else iter(item)
                open_containers.append(_Open(items, copy, depth, len(item)))
            return copy
        shown, cost = _shown_scalar(item, max(budget, 0))
        budget -= cost
        return shown

    root = copy_of(value, 1)
    while open_containers:
        container = open_containers[-1]
        if container.left == 0:
            open_containers.pop()
        elif budget <= 0:
            open_containers.pop()
            if isinstance(container.copy, dict):
                container.copy[CUT_KEY] = f"[truncated: {container.left:,} more keys]"
            else:
                container.copy.append(cut_marker(container.left, "items"))
        else:
            container.left -= 1
            entry = next(container.items)
            if isinstance(container.copy, dict):
                key, item = entry
                key = shown_text(key, max(budget, 1))
                budget -= len(key) + 3
                container.copy[key] = copy_of(item, container.depth + 1)
            else:
                container.copy.append(copy_of(entry, container.depth + 1))
    return root


def _shown_scalar(value: Any, budget: int) -> tuple[Any, int]:
    """A scalar as shown, and about how many characters it takes as JSON."""
    if value is None or isinstance(value, bool):
        return value, 5
    if isinstance(value, int):
        return value, value.bit_length() // 3 + 2
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN", 5
        if math.isinf(value):
            return ("Infinity" if value > 0 else "-Infinity"), 10
        return value, 24
    text = shown_text(value, budget)
    return text, len(text) + 2


def shown_percent(value: Any) -> int:
    """A ``PercentsCompleted`` as a whole number from 0 to 100, whatever was stored."""
    number = _shown_int(value)
    return 0 if number is None else min(100, max(0, number))


def _shown_int(value: Any) -> int | None:
    """A stored whole number, or ``None`` for anything else (SQLite stores what it is given)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    try:
        return int(str(value))
    except ValueError:
        return None


def _shown_flag(value: Any) -> bool:
    """A stored boolean: true only for true (or SQLite's 1), whatever else was stored."""
    return value is True or _shown_int(value) == 1


def shown_run(run: RunSnapshot) -> RunSnapshot:
    """A run snapshot with every value shown safely."""
    return dataclasses.replace(
        run,
        percents_completed=shown_percent(run.percents_completed),
        results=shown_json(run.results),
        checkpoint=shown_json(run.checkpoint),
        standard_output=shown_optional_text(run.standard_output),
        error_output=shown_optional_text(run.error_output),
        error_code=shown_optional_text(run.error_code, SHOWN_SHORT_MAX_CHARS),
        error_message=shown_optional_text(run.error_message),
        progress_step=_shown_int(run.progress_step),
        progress_steps=_shown_int(run.progress_steps),
        progress_status=shown_optional_text(run.progress_status, SHOWN_SHORT_MAX_CHARS),
        celery_task_id=shown_optional_text(run.celery_task_id, SHOWN_SHORT_MAX_CHARS),
        attempt=_shown_int(run.attempt),
        eager=_shown_flag(run.eager),
    )


def shown_task(task: _Task) -> _Task:
    """A task snapshot (with its runs, if it has them) with every value shown safely."""
    short = SHOWN_SHORT_MAX_CHARS
    changes: dict[str, Any] = {
        "task_handler_class": shown_text(task.task_handler_class, short),
        "task_data": shown_json(task.task_data),
        "queued_by_id": shown_optional_text(task.queued_by_id, short),
        "max_retries": _shown_int(task.max_retries) or 0,
        "task_runs_failed": _shown_int(task.task_runs_failed) or 0,
        "title": shown_optional_text(task.title, short),
        "unique_key": shown_optional_text(task.unique_key, short),
        "celery_task_id": shown_optional_text(task.celery_task_id, short),
        "celery_parent_id": shown_optional_text(task.celery_parent_id, short),
        "celery_root_id": shown_optional_text(task.celery_root_id, short),
        "celery_group_id": shown_optional_text(task.celery_group_id, short),
        "celery_chord_id": shown_optional_text(task.celery_chord_id, short),
        "resent_from_id": _shown_int(task.resent_from_id),
        "queue": shown_text(task.queue, short),
        "priority": _shown_int(task.priority) or 0,
    }
    if isinstance(task, TaskSnapshot):
        changes["runs"] = tuple(shown_run(run) for run in task.runs)
    return dataclasses.replace(task, **changes)


def shown_relations(relations: tuple[RelatedTask, ...]) -> tuple[RelatedTask, ...]:
    """Relations with their stored values shown safely."""
    return tuple(
        dataclasses.replace(relation, value=shown_text(relation.value, SHOWN_SHORT_MAX_CHARS))
        for relation in relations
    )


def shown_page(page: TaskPage) -> TaskPage:
    """A page of tasks with every value shown safely."""
    return dataclasses.replace(page, tasks=tuple(shown_task(task) for task in page.tasks))
