"""Where the native audit's writes go: :class:`AuditWriter` runs each write in a transaction.

The auditor hands it operations (a callable taking a connection), in the order they happen in
this process. This is the synchronous writer: each operation commits before ``submit`` returns.
A failing operation is logged and counted, never raised into the task.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Connection

from celery_taskq.core.storage.database import Database

logger = logging.getLogger(__name__)

AuditOp = Callable[[Connection], None]
"""One audit write: statements to run in one transaction, in submission order."""


@dataclass
class AuditWriter:
    """Runs audit operations against the database, in the order they were submitted."""

    get_database: Callable[[], Database]
    failures: int = 0

    def submit(self, op: AuditOp, *, describe: str = "") -> None:
        """Run ``op`` in its own transaction; a failure is logged and counted."""
        try:
            with self.get_database().transaction() as connection:
                op(connection)
        except Exception:
            self.failures += 1
            logger.exception("audit write %s failed", describe, extra={"action": "audit_failed"})

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every submitted operation is written; ``True`` when none is left."""
        return True

    def close(self) -> None:
        """Flush and stop; later submissions are written at once."""
        self.flush()
