"""A batch of new tasks and the due ones' first runs, in one PostgreSQL statement.

Each column travels as one parameter: a statement with a parameter per value costs more to
build and parse than the insert itself. A column whose value differs between tasks goes as
an array, and the rows come from ``unnest`` of those arrays; a column with one value for the
whole batch (the queue time always; the handler, the queue or empty data often) goes as that
one value, which spares the client an array to send and the server one to unnest. Every
parameter is sent in psycopg's binary format (``%(name)b``): an array's cost per element is
then a copy, where the text format escapes each element with a regular expression.

Rows are inserted in the given order and take their ids from the sequence one after the
other, so the ids sorted are the ids in order; they come back as one array.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from typing import Any

from sqlalchemy import Connection

from celery_taskq.core.models import RunStatus

COLUMNS = (
    ("handler", '"TaskHandlerClass"', "varchar"),
    ("data", '"TaskData"', "jsonb"),
    ("scheduled_on", '"ScheduledOn"', "timestamptz"),
    ("queued_on", '"QueuedOn"', "timestamptz"),
    ("queued_by", '"QueuedById"', "varchar"),
    ("last_status", '"LastStatus"', "varchar"),
    ("max_retries", '"MaxRetries"', "int"),
    ("title", '"Title"', "varchar"),
    ("queue", '"Queue"', "varchar"),
    ("priority", '"Priority"', "int"),
)
"""Each written column: its parameter, its name in ``TaskQueue`` and its SQL type."""

_RUNS_AND_IDS = f"""
    RETURNING "Id", "LastStatus", "Queue", "Priority"
), new_runs AS (
    INSERT INTO "TaskRuns" ("TaskQueueId", "Status", "Queue", "Priority")
    SELECT "Id", '{RunStatus.SCHEDULED.value}', "Queue", "Priority" FROM new_tasks
    WHERE "LastStatus" = '{RunStatus.SCHEDULED.value}'
)
SELECT array_agg("Id" ORDER BY "Id") FROM new_tasks"""  # noqa: S608 - constants only


@cache
def statement(arrays: tuple[bool, ...]) -> str:
    """The insert with the columns flagged in ``arrays`` (in :data:`COLUMNS`' order) bound as
    arrays and the others as one value each; built from this module's constants only."""
    selected, unnested, names = [], [], []
    for (name, _column, sql_type), is_array in zip(COLUMNS, arrays, strict=True):
        if is_array:
            unnested.append(f"CAST(%({name})b AS {sql_type}[])")
            names.append(name)
            selected.append(f"t.{name}")
        else:
            selected.append(f"CAST(%({name})b AS {sql_type})")
    if unnested:
        rows = f"unnest({', '.join(unnested)}) WITH ORDINALITY AS t({', '.join(names)}, position)"
    else:
        rows = "generate_series(1, CAST(%(count)b AS int)) AS t(position)"
    columns = ", ".join(column for _name, column, _type in COLUMNS)
    insert = f'INSERT INTO "TaskQueue" ({columns}, "TaskRunsFailed")'
    select = f"SELECT {', '.join(selected)}, 0 FROM {rows} ORDER BY t.position"  # noqa: S608
    return f"WITH new_tasks AS ({insert} {select}{_RUNS_AND_IDS}"


def insert_tasks_and_runs(connection: Connection, columns: dict[str, list[Any]]) -> list[int]:
    """Insert one task per element of ``columns``' lists (one list per :data:`COLUMNS`
    parameter, all as long, values as :mod:`celery_taskq.core.intake` prepares them), and a
    ``scheduled`` run for each task whose ``last_status`` is ``scheduled``; return the tasks'
    ids in order.

    A column is sent as one value when its values are equal: for the values intake prepares
    (text, JSON text, ``None``, ints that are never ``bool``, aware times, where equal times
    in other zones are one instant) equal values are stored alike.
    """
    count = len(columns["handler"])
    parameters: dict[str, Any] = {"count": count}
    arrays = []
    for name, _column, _type in COLUMNS:
        values = columns[name]
        first = values[0]
        uniform = values.count(first) == count  # compared in C, by identity first
        arrays.append(not uniform)
        parameters[name] = first if uniform else values
    sql = statement(tuple(arrays))
    ids: Sequence[int] | None = connection.exec_driver_sql(sql, parameters).scalar_one()
    return [] if ids is None else [int(task_id) for task_id in ids]
