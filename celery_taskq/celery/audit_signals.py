"""Connecting the native task audit to Celery's signals, and :class:`AuditedTask`, the base class
of tasks to audit one by one (:mod:`celery_taskq.celery.audit` writes the rows).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from celery import Celery, Task, signals

from celery_taskq.celery.audit import QUEUED_BY_HEADER, TASK_ID_HEADER, NativeTaskAuditor
from celery_taskq.celery.state import TaskqCelery


class AuditedTask(Task):  # type: ignore[misc]
    """Base class for chosen tasks to audit when the app does not audit all of them.

    ``@app.task(base=AuditedTask)`` records every publish and execution of the task.
    """

    taskq_audit = True


def connect_audit(app: Celery, state: TaskqCelery, *, audit_all: bool) -> None:
    """Connect a :class:`~celery_taskq.celery.audit.NativeTaskAuditor` to Celery's task signals.

    Every plain task of ``app`` is audited with ``audit_all``, otherwise only those whose base is
    :class:`AuditedTask`; celery_taskq's own tasks never are.
    """

    def should_audit(task_name: str) -> bool:
        if task_name.startswith("taskq."):
            return False
        return audit_all or bool(getattr(app.tasks.get(task_name), "taskq_audit", False))

    auditor = NativeTaskAuditor(get_service=lambda: state.service, should_audit=should_audit)
    state.auditor = auditor
    uid = f"celery_taskq-audit-{id(app)}"

    def before_publish(
        sender: Any = None, body: Any = None, headers: dict[str, Any] | None = None, **_: Any
    ) -> None:
        if headers is None or not isinstance(body, tuple | list) or len(body) < 2:
            return  # only Celery's message protocol 2 carries what the audit needs
        name = str(headers.get("task") or sender)
        task = app.tasks.get(name)
        auditor.on_publish(
            task_id=str(headers.get("id")),
            task_name=name,
            args=body[0],
            kwargs=body[1],
            headers=headers,
            eta=_parse_eta(headers.get("eta")),
            max_retries=getattr(task, "max_retries", None) if task is not None else None,
        )

    def prerun(
        task_id: str = "", task: Any = None, args: Any = None, kwargs: Any = None, **_: Any
    ) -> None:
        request = task.request
        auditor.on_prerun(
            task_id=task_id,
            task_name=task.name,
            args=args,
            kwargs=kwargs,
            headers={
                TASK_ID_HEADER: getattr(request, TASK_ID_HEADER, None),
                QUEUED_BY_HEADER: getattr(request, QUEUED_BY_HEADER, None),
            },
            worker_hostname=str(request.hostname or ""),
        )

    def failure(task_id: str = "", exception: Any = None, einfo: Any = None, **_: Any) -> None:
        auditor.on_failure(task_id=task_id, exception=exception, traceback=str(einfo or ""))

    def retry(request: Any = None, reason: Any = None, einfo: Any = None, **_: Any) -> None:
        # Celery reports the Retry exception; the error that caused the retry is its `exc`.
        reason = getattr(reason, "exc", None) or reason
        reason = reason if isinstance(reason, BaseException) else RuntimeError(str(reason))
        auditor.on_retry(task_id=str(request.id), reason=reason, traceback=str(einfo or ""))

    def postrun(task_id: str = "", retval: Any = None, state: str | None = None, **_: Any) -> None:
        auditor.on_postrun(task_id=task_id, state=state, retval=retval)

    def process_shutdown(**_: Any) -> None:
        auditor.on_process_shutdown()

    for signal, receiver in (
        (signals.before_task_publish, before_publish),
        (signals.task_prerun, prerun),
        (signals.task_failure, failure),
        (signals.task_retry, retry),
        (signals.task_postrun, postrun),
        (signals.worker_process_shutdown, process_shutdown),
    ):
        signal.connect(receiver, weak=False, dispatch_uid=f"{uid}-{receiver.__name__}")


def _parse_eta(value: Any) -> datetime | None:
    if not value:
        return None
    eta = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return eta if eta.tzinfo is not None else eta.replace(tzinfo=UTC)
