"""What pruning has deleted, by kind: the running totals of ``TaskqPrunedRows`` (metrics)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, select

from celery_taskq.core.retention import PRUNED_KINDS
from celery_taskq.core.retention_models import PrunedRows
from celery_taskq.core.storage.database import Database
from celery_taskq.reports.sql import read_with


@dataclass(frozen=True)
class PrunedTotal:
    """Rows of one kind deleted by pruning, ever."""

    kind: str
    rows: int
    last_pruned_on: datetime | None


def pruned_totals(database: Database) -> tuple[PrunedTotal, ...]:
    """One total per kind of :data:`~celery_taskq.core.retention.PRUNED_KINDS` (0 where none
    was pruned), then any other kind stored."""

    def read(connection: Connection) -> tuple[PrunedTotal, ...]:
        query = select(PrunedRows.kind, PrunedRows.rows_pruned, PrunedRows.last_pruned_on)
        stored = {
            str(kind): PrunedTotal(str(kind), int(rows or 0), last)
            for kind, rows, last in connection.execute(query)
        }
        known = [stored.pop(kind, PrunedTotal(kind, 0, None)) for kind in PRUNED_KINDS]
        return (*known, *(stored[kind] for kind in sorted(stored)))

    return read_with(database, read)
