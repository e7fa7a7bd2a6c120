"""The rows of native Celery tasks just published, written together.

A producer's audit writer gathers its publishes in batches; a batch's rows are inserted in
order, each unless its task id has a row already (the worker's first start may have come
first). On PostgreSQL that is one statement binding each column as an array
(:func:`celery_taskq.core.statements.native_pg.record_published`); elsewhere one
``executemany`` of :func:`celery_taskq.core.statements.native.published_statement`.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Connection

from celery_taskq.core.statements import native, native_pg
from celery_taskq.core.statements.native import NativeTask


def record_published(connection: Connection, tasks: Sequence[NativeTask]) -> None:
    """Insert the rows of ``tasks``, in order, skipping task ids that have one."""
    if not tasks:
        return
    if connection.dialect.name == "postgresql":
        native_pg.record_published(connection, tasks)
        return
    connection.execute(
        native.published_statement(connection.dialect.name),
        [native.published_params(task) for task in tasks],
    )
