"""Re-sending a native Celery task from its record: ``celery-taskq resend``, the HTTP API's and
the dashboard's re-send action.

The order makes a failed publish leave nothing behind that looks sent:

1. in one transaction, the old row is checked (:func:`celery_taskq.core.resend.plan_resend`)
   and the re-send's row is inserted with a fresh Celery task id (a UUID, as Celery makes
   them), ``ResentFromId`` = the old row and ``QueuedById`` = who asked;
2. the message is published with ``app.send_task(name, args, kwargs, task_id=that id)``, routed
   as the app routes that task name. The audit's own publish record meets the row on its
   Celery task id and leaves it as it is; the worker's first start fills in the rest;
3. when publishing raises, the row is deleted and :class:`PublishError` says nothing was sent.

The row is committed before publishing, not held open across it: the audit writes its publish
record from this process too, and a transaction still open would make that write wait on it.
A process killed between 1 and 2 leaves a row that never starts: it is reported as possibly
lost once ``native_lost_after`` has passed, like any message that went missing.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Any

from celery_taskq.celery.audit import QUEUED_BY_HEADER
from celery_taskq.core.exceptions import ConfigurationError, PublishError
from celery_taskq.core.queue import TaskQueueService
from celery_taskq.core.resend import insert_resend, plan_resend, withdraw_resend

logger = logging.getLogger(__name__)

NO_APP = (
    "no Celery app is configured to publish with: give it with --app (-A) or TASKQ_APP, "
    "as `celery -A` takes it"
)


@dataclass(frozen=True)
class Resent:
    """A task re-sent: its new row and the Celery task id the message carries."""

    task_id: int
    celery_task_id: str
    resent_from_id: int
    task_name: str


def resend_task(service: TaskQueueService, app: Any, task_id: int, *, queued_by: str) -> Resent:
    """Publish native task ``task_id`` again through ``app`` (a ``celery.Celery``), as a new
    ``TaskQueue`` row linked to the old one; see the module for the order of the steps.

    Refused before anything is written: no app (:class:`ConfigurationError`), an unknown id,
    and a task that is not native, not failed for good nor possibly lost, or whose arguments
    are not stored (see :func:`~celery_taskq.core.resend.plan_resend`).
    """
    if app is None:
        raise ConfigurationError(NO_APP)
    if not hasattr(app, "send_task"):
        raise ConfigurationError(f"{NO_APP} (got a {type(app).__name__}, not a Celery app)")
    celery_task_id = str(uuid.uuid4())
    now = service.clock()
    with service.database.transaction() as connection:
        plan = plan_resend(
            connection, task_id, now=now, lost_after=service.settings.native_lost_after
        )
        resend_id = insert_resend(
            connection, plan, celery_task_id=celery_task_id, queued_by=queued_by, now=now
        )
    try:
        app.send_task(
            plan.task_name,
            args=plan.args,
            kwargs=plan.kwargs,
            task_id=celery_task_id,
            headers={QUEUED_BY_HEADER: queued_by},
        )
    except Exception as exc:
        with service.database.transaction() as connection:
            withdraw_resend(connection, resend_id)
        raise PublishError(
            f"re-sending task {task_id} failed: Celery could not publish {plan.task_name!r} "
            f"({type(exc).__name__}: {exc}); nothing was sent"
        ) from exc
    logger.info(
        "task %s re-sent as task %s (Celery task %s) by %s",
        task_id,
        resend_id,
        celery_task_id,
        queued_by,
        extra={"action": "task_resent", "queue_id": resend_id, "resent_from_id": task_id},
    )
    return Resent(resend_id, celery_task_id, task_id, plan.task_name)
