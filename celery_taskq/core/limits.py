"""Concurrency and rate limits of handler runs: from the settings into ``TaskqLimits``.

The limits are declared in every process's settings (``TASKQ_CONCURRENCY``,
``TASKQ_RATE_LIMITS``). A process that declares some writes them into ``TaskqLimits`` and
recounts the running runs there (:func:`apply_declared_limits`): OnProcess does so on every
tick, and a standalone runner when it starts. Its runners then claim with the limits
(:class:`~celery_taskq.core.statements.claim.ClaimScope` ``limited``). A process that declares
none leaves the table as it is. How the claim enforces them is
:mod:`celery_taskq.core.statements.limits`.
"""

from __future__ import annotations

import logging

from celery_taskq.core.exceptions import StorageError
from celery_taskq.core.settings import Settings
from celery_taskq.core.statements import limits
from celery_taskq.core.storage.database import Database

logger = logging.getLogger(__name__)


def apply_declared_limits(database: Database, settings: Settings) -> bool:
    """Store the limits ``settings`` declares and recount their running runs; ``False`` when
    it declares none (nothing is read or written) or the database failed (logged)."""
    declared = settings.limits
    if not declared:
        return False
    try:
        with database.transaction() as connection:
            limits.store_limits(connection, declared)
        with database.transaction() as connection:
            limits.recount_running(connection)
    except StorageError:
        logger.exception("the limits could not be stored", extra={"action": "limits_failed"})
        return False
    return True
