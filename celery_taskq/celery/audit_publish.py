"""A publish's write: the task's row, written with the other publishes of its batch."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Connection

from celery_taskq.celery.audit_writer import GroupedOp
from celery_taskq.core.statements import native_published
from celery_taskq.core.statements.native import NativeTask


class PublishedTask(GroupedOp):
    """Insert a published task's row unless its task id has one."""

    def __init__(self, task: NativeTask) -> None:
        self.task = task

    @property
    def group(self) -> object:
        """Every publish: consecutive ones are written as one statement."""
        return PublishedTask

    def run_group(self, connection: Connection, ops: Sequence[GroupedOp]) -> None:
        """Write the rows of ``ops``, in order."""
        native_published.record_published(
            connection, [op.task for op in ops if isinstance(op, PublishedTask)]
        )
