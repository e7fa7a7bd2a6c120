"""New tasks: checking what is asked for, then inserting it into ``TaskQueue``.

Checking (:func:`prepare`) reads nothing from the database and writes nothing, so every
argument of a whole batch is checked before the first row is written. Task data meets the same
limits at every way in (:func:`check_task_data`): at most
:data:`~celery_taskq.core.storage.storable.MAX_JSON_DEPTH` levels deep and at most
``task_data_max_bytes`` (``TASKQ_TASK_DATA_MAX_BYTES``) as JSON. Inserting
(:func:`insert_one`, :func:`insert_many`) runs inside a transaction the caller owns — the
queue's own, or the application's, so that tasks commit together with the application's data.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from functools import cache
from typing import Any

from sqlalchemy import Connection, insert

from celery_taskq.core.exceptions import (
    DuplicateTaskError,
    InvalidArgumentError,
    InvalidTaskDataError,
    InvalidTaskError,
    StorageError,
    TaskDataLimitError,
)
from celery_taskq.core.handlers import TaskHandler
from celery_taskq.core.models import DEFAULT_QUEUE, Base, RunStatus, TaskQueue, TaskRun
from celery_taskq.core.queues import check_priority, check_queue_name
from celery_taskq.core.settings import DEFAULT_MAX_RETRIES, DEFAULT_TASK_DATA_MAX_BYTES
from celery_taskq.core.statements import batch_insert_pg, tasks
from celery_taskq.core.steps import MultiStepTask, check_steps
from celery_taskq.core.storage.storable import (
    MAX_INT32,
    MAX_JSON_DEPTH,
    deeper_than,
    json_problem,
    text_problem,
    time_problem,
)

UNIQUE_INSERT_ATTEMPTS = 3
"""Tries at inserting a task whose unique key is released by a task finishing meanwhile."""

ON_DUPLICATE_CHOICES = ("return", "raise")
"""What enqueue does while a task with the same unique key is unfinished."""


@dataclass(frozen=True)
class TaskSpec:
    """One task to enqueue: the arguments of :func:`celery_taskq.enqueue` as a value."""

    handler: str
    data: Any = None
    scheduled_on: datetime | None = None
    max_retries: int | None = None
    queued_by: str | None = None
    title: str | None = None
    unique_key: str | None = None
    queue: str | None = None
    priority: int | None = None

    @classmethod
    def of(cls, item: TaskSpec | Mapping[str, Any]) -> TaskSpec:
        """A spec from a :class:`TaskSpec` or a mapping with the same keys."""
        if isinstance(item, TaskSpec):
            return item
        if not isinstance(item, Mapping):
            raise InvalidArgumentError(
                f"a task must be a TaskSpec or a mapping, not {type(item).__name__}"
            )
        if not item.keys() <= _SPEC_KEYS:
            unknown = set(item) - _SPEC_KEYS
            raise InvalidArgumentError(
                f"unknown task keys: {', '.join(sorted(map(str, unknown)))}"
                f" (known: {', '.join(sorted(_SPEC_KEYS))})"
            )
        if "handler" not in item:
            raise InvalidArgumentError("a task needs a 'handler'")
        return cls(**item)


_SPEC_KEYS = frozenset(field.name for field in fields(TaskSpec))


def prepare(
    spec: TaskSpec,
    *,
    create_handler: Callable[[str], TaskHandler],
    now: datetime,
    max_data_bytes: int = DEFAULT_TASK_DATA_MAX_BYTES,
) -> dict[str, Any]:
    """Check every part of ``spec`` and return the ``TaskQueue`` row's values (attribute names).

    Raises an :class:`~celery_taskq.core.exceptions.InvalidTaskError` for anything refused.
    """
    if isinstance(spec.handler, str) and (problem := text_problem(spec.handler)) is not None:
        raise InvalidArgumentError(f"the task handler {problem}")
    handler = create_handler(spec.handler)
    document = task_data_document(spec.data, max_bytes=max_data_bytes)
    max_retries = DEFAULT_MAX_RETRIES if spec.max_retries is None else spec.max_retries
    if (
        isinstance(max_retries, bool)
        or not isinstance(max_retries, int)
        or not 1 <= max_retries <= MAX_INT32
    ):
        raise InvalidArgumentError(
            f"max_retries must be an integer of 1 or more (at most {MAX_INT32}), "
            f"not {max_retries!r}"
        )
    scheduled_on = spec.scheduled_on
    if scheduled_on is None:
        scheduled_on = now
    elif not isinstance(scheduled_on, datetime) or scheduled_on.tzinfo is None:
        raise InvalidArgumentError(
            f"scheduled_on must be a timezone-aware datetime, not {scheduled_on!r}"
        )
    elif (problem := time_problem(scheduled_on)) is not None:
        raise InvalidArgumentError(f"scheduled_on {problem}")
    queued_by = spec.queued_by
    if queued_by is not None and (
        not isinstance(queued_by, str | int)
        or isinstance(queued_by, bool)
        or len(str(queued_by)) > 255
        or text_problem(str(queued_by)) is not None
    ):
        raise InvalidArgumentError(
            "queued_by must be a string of at most 255 characters, without NUL characters"
        )
    title = optional_text("title", spec.title)
    unique_key = optional_text("unique_key", spec.unique_key)
    queue = DEFAULT_QUEUE if spec.queue is None else check_queue_name(spec.queue)
    priority = 0 if spec.priority is None else check_priority(spec.priority)
    try:
        handler.validate(document)
    except InvalidTaskError as exc:
        raise type(exc)(f"task data refused by {spec.handler}: {exc}") from exc
    except Exception as exc:
        raise InvalidTaskError(f"task data refused by {spec.handler}: {exc}") from exc
    if isinstance(handler, MultiStepTask):
        check_steps(document, create_handler)
    return {
        "task_handler_class": spec.handler.strip(),
        "task_data": document,
        "scheduled_on": scheduled_on,
        "queued_on": now,
        "queued_by_id": None if queued_by is None else str(queued_by),
        "max_retries": max_retries,
        "task_runs_failed": 0,
        "title": title,
        "unique_key": unique_key,
        "queue": queue,
        "priority": priority,
    }


def prepare_many(
    items: Sequence[TaskSpec | Mapping[str, Any]],
    *,
    create_handler: Callable[[str], TaskHandler],
    now: datetime,
    max_data_bytes: int = DEFAULT_TASK_DATA_MAX_BYTES,
) -> list[dict[str, Any]]:
    """:func:`prepare` each item; a refusal names the item (counting from 0)."""
    if isinstance(items, str | bytes) or not isinstance(items, Sequence):
        raise InvalidArgumentError("tasks must be a list of TaskSpec or mappings")
    handlers: dict[str, TaskHandler] = {}

    def create_once(path: str) -> TaskHandler:
        # A batch names a few handlers many times: each is loaded (and its allow-list
        # checked) once, and validates every task that names it.
        if not isinstance(path, str):
            return create_handler(path)
        handler = handlers.get(path)
        if handler is None:
            handler = handlers[path] = create_handler(path)
        return handler

    rows = []
    for index, item in enumerate(items):
        try:
            spec = TaskSpec.of(item)
            rows.append(
                prepare(spec, create_handler=create_once, now=now, max_data_bytes=max_data_bytes)
            )
        except InvalidTaskError as exc:
            raise type(exc)(f"task {index}: {exc}") from exc
        except TypeError as exc:  # a mapping whose values TaskSpec cannot take
            raise InvalidArgumentError(f"task {index}: {exc}") from exc
    return rows


def insert_one(
    connection: Connection,
    values: dict[str, Any],
    *,
    with_run: bool,
    raise_duplicate: bool,
) -> tuple[int, bool]:
    """Insert one prepared task; return its id and whether it is new.

    While a task with the same unique key is unfinished, that task's id is returned (or
    :class:`DuplicateTaskError` raised). With ``with_run`` a task that is already due gets its
    first run in the same transaction.
    """
    if is_single_statement(values, with_run=with_run):
        return tasks.insert_due_task(connection, values), True
    for _ in range(UNIQUE_INSERT_ATTEMPTS):
        task_id = tasks.insert_task(connection, values)
        if task_id is not None:
            if with_run:
                tasks.create_runs(connection, values["queued_on"], task_id)
            return task_id, True
        existing = tasks.unfinished_task_with_key(connection, values["unique_key"])
        if existing is None:
            continue  # the holder of the key finished meanwhile: insert again
        if raise_duplicate:
            raise DuplicateTaskError(
                f"task {existing} with unique key {values['unique_key']!r} is not finished yet",
                existing_id=existing,
            )
        return int(existing), False
    raise StorageError(f"could not queue the task with unique key {values['unique_key']!r}")


def is_single_statement(values: Mapping[str, Any], *, with_run: bool) -> bool:
    """Whether :func:`insert_one` writes ``values`` with one statement on PostgreSQL: a due
    task without a unique key, with its first run."""
    return (
        with_run
        and values.get("unique_key") is None
        and values["scheduled_on"] <= values["queued_on"]
    )


def insert_many(
    connection: Connection,
    rows: Sequence[dict[str, Any]],
    *,
    with_run: bool,
    raise_duplicate: bool,
) -> list[int]:
    """Insert prepared tasks; return their ids in order.

    Tasks without a unique key go in one statement with their due runs on PostgreSQL, and in
    one multi-row ``INSERT … RETURNING`` (and, with ``with_run``, the due ones' runs in one
    more) on SQLite, so a batch costs a few round trips whatever its size. Tasks with a unique
    key go through :func:`insert_one`.
    """
    ids: list[int | None] = [None] * len(rows)
    plain = [index for index, row in enumerate(rows) if row.get("unique_key") is None]
    for index, row in enumerate(rows):
        if row.get("unique_key") is not None:
            ids[index], _ = insert_one(
                connection, row, with_run=with_run, raise_duplicate=raise_duplicate
            )
    if plain and connection.dialect.name == "postgresql":
        due = [with_run and rows[i]["scheduled_on"] <= rows[i]["queued_on"] for i in plain]
        new_ids = _pg_insert_tasks_and_runs(connection, [rows[i] for i in plain], due)
        for index, task_id in zip(plain, new_ids, strict=True):
            ids[index] = task_id
    elif plain:
        due = [with_run and rows[i]["scheduled_on"] <= rows[i]["queued_on"] for i in plain]
        values = [
            _column_values(
                TaskQueue, {**rows[i], "last_status": RunStatus.SCHEDULED if is_due else None}
            )
            for i, is_due in zip(plain, due, strict=True)
        ]
        new_ids = _insert_returning_ids(connection, values)
        due_runs = []
        for index, is_due, task_id in zip(plain, due, new_ids, strict=True):
            ids[index] = int(task_id)
            if is_due:
                due_runs.append((int(task_id), rows[index]))
        if due_runs:
            connection.execute(
                insert(TaskRun),
                [
                    _column_values(
                        TaskRun,
                        {
                            "task_queue_id": task_id,
                            "status": RunStatus.SCHEDULED,
                            "queue": row["queue"],
                            "priority": row["priority"],
                        },
                    )
                    for task_id, row in due_runs
                ],
            )
    return [int(task_id) for task_id in ids if task_id is not None]


def _pg_insert_tasks_and_runs(
    connection: Connection, rows: Sequence[dict[str, Any]], due: Sequence[bool]
) -> list[int]:
    """Insert tasks and the due ones' first runs in one statement; return the ids in order."""
    handler, data, scheduled_on, queued_on, queued_by = [], [], [], [], []
    max_retries, title, queue, priority = [], [], [], []
    for row in rows:
        handler.append(row["task_handler_class"])
        document = row["task_data"]
        data.append(_EMPTY_DOCUMENT if document == {} else json.dumps(document))
        scheduled_on.append(row["scheduled_on"])
        queued_on.append(row["queued_on"])
        queued_by.append(row["queued_by_id"])
        max_retries.append(row["max_retries"])
        title.append(row["title"])
        queue.append(row["queue"])
        priority.append(row["priority"])
    scheduled = RunStatus.SCHEDULED.value
    columns = {
        "handler": handler,
        "data": data,
        "scheduled_on": scheduled_on,
        "queued_on": queued_on,
        "queued_by": queued_by,
        "last_status": [scheduled if is_due else None for is_due in due],
        "max_retries": max_retries,
        "title": title,
        "queue": queue,
        "priority": priority,
    }
    return batch_insert_pg.insert_tasks_and_runs(connection, columns)


_EMPTY_DOCUMENT = "{}"
"""The JSON of empty task data (the default), spared a ``json.dumps`` per task."""


def _insert_returning_ids(connection: Connection, values: list[dict[str, Any]]) -> list[int]:
    """Insert ``TaskQueue`` rows on SQLite; return their ids in the order given.

    SQLAlchemy would insert row by row to return them in order, so the ids are sorted instead:
    the write lock is held for the whole transaction and SQLite numbers the rows of an insert
    upwards in order.
    """
    statement = insert(TaskQueue).returning(TaskQueue.id)
    return sorted(int(i) for i in connection.execute(statement, values).scalars())


def check_task_data(data: Any, *, max_bytes: int = DEFAULT_TASK_DATA_MAX_BYTES) -> None:
    """Refuse task data that no intake accepts, with the message every intake gives.

    Raises :class:`~celery_taskq.core.exceptions.TaskDataLimitError` for data nested more than
    :data:`~celery_taskq.core.storage.storable.MAX_JSON_DEPTH` levels deep or larger than
    ``max_bytes`` (pass ``Settings.task_data_max_bytes``) as compact UTF-8 JSON, and
    :class:`~celery_taskq.core.exceptions.InvalidTaskDataError` for data JSON cannot hold or a
    database cannot store (NUL characters, lone surrogates).
    """
    task_data_document(data, max_bytes=max_bytes)


def task_data_document(data: Any, *, max_bytes: int = DEFAULT_TASK_DATA_MAX_BYTES) -> Any:
    """``data`` as the JSON document stored (``None`` becomes ``{}``), checked as
    :func:`check_task_data` does."""
    if data is None:
        return {}
    if deeper_than(data, MAX_JSON_DEPTH):  # before json.dumps, which would recurse that deep
        raise TaskDataLimitError(
            f"task data is nested too deeply: more than {MAX_JSON_DEPTH} levels of objects "
            "and lists"
        )
    try:
        text = json.dumps(data, allow_nan=False, ensure_ascii=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise InvalidTaskDataError(f"task data cannot be stored as JSON: {exc}") from exc
    # UTF-8 takes at most 4 bytes a character: short text needs no encoding to be measured.
    size = len(text) if len(text) * 4 <= max_bytes else len(text.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise TaskDataLimitError(
            f"task data is too large: {size:,} bytes as JSON, more than the limit of "
            f"{max_bytes:,} bytes (TASKQ_TASK_DATA_MAX_BYTES)"
        )
    document = json.loads(text)
    problem = json_problem(document)
    if problem is not None:
        raise InvalidTaskDataError(f"task data cannot be stored: it {problem}")
    return document


def optional_text(name: str, value: str | None) -> str | None:
    """A short optional text argument, checked."""
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > 255:
        raise InvalidArgumentError(f"{name} must be a non-empty string of at most 255 characters")
    problem = text_problem(value)
    if problem is not None:
        raise InvalidArgumentError(f"{name} {problem}")
    return value


def check_on_duplicate(on_duplicate: str) -> None:
    """Refuse an ``on_duplicate`` other than ``"return"`` or ``"raise"``."""
    if on_duplicate not in ON_DUPLICATE_CHOICES:
        raise InvalidArgumentError("on_duplicate must be 'return' or 'raise'")


def _column_values(model: type[Base], values: Mapping[str, Any]) -> dict[str, Any]:
    """Attribute-named values keyed by column name, as a multi-row Core insert needs them."""
    column_names = _column_names(model)
    return {column_names[name]: value for name, value in values.items()}


@cache
def _column_names(model: type[Base]) -> dict[str, str]:
    """The column name of each of ``model``'s column attributes (asked once per task)."""
    return {attribute.key: attribute.columns[0].key for attribute in model.__mapper__.column_attrs}
