"""The retention's tables: what pruning deleted, for the metrics (on ``models.Base``)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Index, String, text
from sqlalchemy.orm import Mapped, mapped_column

from celery_taskq.core.models import Base, TaskQueue


class PrunedRows(Base):
    """One row per kind of row pruning deletes: a running total, and where OnProcess goes on.

    Kinds are ``tasks``, ``runs``, ``runners``, ``beat_ticks`` and ``schedule_slots``
    (:data:`celery_taskq.core.retention.PRUNED_KINDS`).
    """

    __tablename__ = "TaskqPrunedRows"

    kind: Mapped[str] = mapped_column("Kind", String(32), primary_key=True)
    rows_pruned: Mapped[int] = mapped_column("RowsPruned", BigInteger, server_default=text("0"))
    """Rows of this kind deleted by pruning, ever (OnProcess and ``celery-taskq prune``)."""
    last_pruned_on: Mapped[datetime | None] = mapped_column("LastPrunedOn")
    """When a row of this kind was last deleted."""
    resume_after_id: Mapped[int] = mapped_column(
        "ResumeAfterId", BigInteger, server_default=text("0")
    )
    """OnProcess's walk over the table: its next batch looks at ids above this (0: a new pass)."""


RESENT_FROM_SQL = '"ResentFromId" IS NOT NULL'

Index(
    "ix_TaskQueue_ResentFromId",
    TaskQueue.resent_from_id,
    postgresql_where=text(RESENT_FROM_SQL),
    sqlite_where=text(RESENT_FROM_SQL),
)
"""Deleting a task sets ``ResentFromId`` of its re-sends to NULL: without this index each
deleted task would cost PostgreSQL a scan of ``TaskQueue`` to find them."""
