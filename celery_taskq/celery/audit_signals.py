"""Connecting the native task audit to Celery, and :class:`AuditedTask`, the base class of tasks
to audit one by one (:mod:`celery_taskq.celery.audit` writes the rows).

Only the app ``install()`` was given is audited, whatever else runs in the process:

- task signals carry the task as their sender, and a task belongs to one app (``task.app``);
- ``before_task_publish`` carries only the task's name. Every publish goes through the app's
  ``app.amqp.send_task_message`` (built by ``AMQP._create_task_sender``, which sends the signal
  from inside it), so the audit wraps that function of this app's ``amqp`` and marks the
  thread while it runs; the receiver acts only while this app marked it.

Where each signal fires: ``before_task_publish`` in the publishing process; ``task_prerun``,
``task_success``, ``task_failure``, ``task_retry`` and ``task_postrun`` in the process running
the attempt (a pool process, or the caller for an eager run); ``task_revoked`` in the worker's
main process, and ``task_failure`` there too for a lost pool process (``WorkerLostError``) or,
from Celery 5.5, a hard time limit; ``worker_init`` and ``worker_shutdown`` in the main process;
``worker_process_init`` and ``worker_process_shutdown`` in each pool process.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

from celery import Celery, Task, signals
from celery.exceptions import Reject, SoftTimeLimitExceeded, TimeLimitExceeded, WorkerLostError

from celery_taskq.celery.audit import QUEUED_BY_HEADER, NativeTaskAuditor, NotedError, TaskMessage
from celery_taskq.celery.audit_beat import beat_queued_by, connect_beat_link, take_firing_entry
from celery_taskq.celery.audit_writer import AuditWriter
from celery_taskq.celery.state import TaskqCelery
from celery_taskq.core.native_codes import NATIVE_CODE_STATUS, NativeCode

_publishing = threading.local()
"""``app``: the app whose ``send_task_message`` this thread is in, if any."""

DEFAULT_MAX_RETRIES: int | None = Task.max_retries
"""Celery's own default, for a task the publishing process does not know."""


class AuditedTask(Task):  # type: ignore[misc]
    """Base class for chosen tasks to audit when the app does not audit all of them.

    ``@app.task(base=AuditedTask)`` records every publish and execution of the task. A task
    with ``taskq_audit = False`` is never audited.
    """

    taskq_audit = True


def connect_audit(app: Celery, state: TaskqCelery, *, audit_all: bool) -> None:
    """Connect a :class:`~celery_taskq.celery.audit.NativeTaskAuditor` to Celery's signals.

    Every plain task of ``app`` is audited with ``audit_all``, otherwise only those whose base is
    :class:`AuditedTask`; a task's own ``taskq_audit`` attribute decides over both, and
    celery_taskq's own tasks never are.
    """

    def should_audit(task_name: str) -> bool:
        if task_name.startswith("taskq."):
            return False
        chosen = getattr(app.tasks.get(task_name), "taskq_audit", None)
        return audit_all if chosen is None else bool(chosen)

    auditor = NativeTaskAuditor(
        get_service=lambda: state.service,
        should_audit=should_audit,
        writer=AuditWriter(lambda: state.service.database, lambda: state.settings),
    )
    state.auditor = auditor
    _mark_publishing(app)
    connect_beat_link(app)
    receivers = _receivers(app, auditor)
    uid = f"celery_taskq-audit-{id(app)}"
    for name, receiver in receivers.items():
        getattr(signals, name).connect(receiver, weak=False, dispatch_uid=f"{uid}-{name}")


def _receivers(app: Celery, auditor: NativeTaskAuditor) -> dict[str, Callable[..., None]]:
    def ours(task: Any) -> bool:
        try:
            return task is not None and task.app is app
        except Exception:  # a sender that is no task of an app
            return False

    def before_task_publish(
        sender: Any = None, body: Any = None, headers: dict[str, Any] | None = None, **_: Any
    ) -> None:
        if not _published_by(app) or headers is None:
            return
        if not isinstance(body, tuple | list) or len(body) < 2:
            return  # only Celery's message protocol 2 carries what the audit needs
        name = str(headers.get("task") or sender)
        embed = body[2] if len(body) > 2 and isinstance(body[2], Mapping) else {}
        queued_by = _text(headers.get(QUEUED_BY_HEADER))
        entry = take_firing_entry()
        if queued_by is None and entry is not None and auditor.should_audit(name):
            # The worker reads the same header, so both records of the task agree.
            queued_by = headers[QUEUED_BY_HEADER] = beat_queued_by(entry)
        auditor.on_publish(
            TaskMessage(
                task_id=str(headers.get("id")),
                task_name=name,
                args=body[0],
                kwargs=body[1],
                eta=_parse_eta(headers.get("eta")),
                retries=int(headers.get("retries") or 0),
                max_retries=_max_retries(app.tasks.get(name)),
                parent_id=_text(headers.get("parent_id")),
                root_id=_text(headers.get("root_id")),
                group_id=_text(headers.get("group")),
                chord_id=_chord_id(embed.get("chord")),
                queued_by=queued_by,
                replaced_nesting=int(headers.get("replaced_task_nesting") or 0),
            )
        )

    def task_prerun(task: Any = None, args: Any = None, kwargs: Any = None, **_: Any) -> None:
        if not ours(task):
            return
        request = task.request
        auditor.on_start(
            _message_of(task, request, args, kwargs),
            worker_hostname=str(request.hostname or ""),
            ignore_result=bool(task.ignore_result or getattr(request, "ignore_result", False)),
        )

    def task_success(sender: Any = None, **_: Any) -> None:
        if ours(sender):
            auditor.on_outcome(task_id=str(sender.request.id))

    def task_retry(
        sender: Any = None, request: Any = None, reason: Any = None, einfo: Any = None, **_: Any
    ) -> None:
        if not ours(sender):
            return
        # Celery reports the Retry exception; the error that caused the retry is its `exc`.
        cause = getattr(reason, "exc", None)
        error = None if cause is None else _noted(cause, _traceback(einfo))
        auditor.on_outcome(task_id=str(request.id), error=error)

    def task_failure(
        sender: Any = None,
        task_id: str = "",
        exception: Any = None,
        args: Any = None,
        kwargs: Any = None,
        einfo: Any = None,
        **_: Any,
    ) -> None:
        if not ours(sender):
            return
        if auditor.current_attempt(task_id) is not None:
            auditor.on_outcome(task_id=task_id, error=_noted(exception, _traceback(einfo)))
            return
        if isinstance(exception, Reject):
            return  # Celery 5.5+ repeats a rejection here; the attempt's process recorded it
        final = True
        if isinstance(exception, TimeLimitExceeded) and sender.acks_late:
            final = bool(getattr(sender, "acks_on_failure_or_timeout", True))
        request = sender.request
        if getattr(request, "id", None) != task_id:  # a hard time limit pushes no request
            request = SimpleNamespace(id=task_id, args=args, kwargs=kwargs)
        auditor.on_main_failure(
            _message_of(sender, request, args, kwargs),
            _noted(exception, _traceback(einfo)),
            final=final,
        )

    def task_postrun(
        task: Any = None, task_id: str = "", retval: Any = None, state: str | None = None, **_: Any
    ) -> None:
        if ours(task):
            requeue = bool(getattr(retval, "requeue", False))
            auditor.on_end(task_id=task_id, state=state, retval=retval, requeue=requeue)

    def task_revoked(
        sender: Any = None,
        request: Any = None,
        terminated: bool = False,
        expired: bool = False,
        **_: Any,
    ) -> None:
        if ours(sender) and request is not None:
            auditor.on_revoked(
                _message_of(sender, request, None, None),
                terminated=bool(terminated),
                expired=bool(expired),
            )

    def worker_init(sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", None) is app:
            auditor.worker_hostname = str(sender.hostname)

    def worker_process_init(**_: Any) -> None:
        if auditor.worker_hostname:
            auditor.on_process_init(auditor.worker_hostname)

    def worker_process_shutdown(**_: Any) -> None:
        auditor.on_process_shutdown()

    def worker_shutdown(sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", None) is app:
            auditor.on_worker_shutdown(str(sender.hostname))

    return {
        "before_task_publish": before_task_publish,
        "task_prerun": task_prerun,
        "task_success": task_success,
        "task_retry": task_retry,
        "task_failure": task_failure,
        "task_postrun": task_postrun,
        "task_revoked": task_revoked,
        "worker_init": worker_init,
        "worker_process_init": worker_process_init,
        "worker_process_shutdown": worker_process_shutdown,
        "worker_shutdown": worker_shutdown,
    }


def _published_by(app: Celery) -> bool:
    """Whether this thread is inside ``app``'s ``send_task_message``."""
    return getattr(_publishing, "app", None) is app


def _mark_publishing(app: Celery) -> None:
    """Wrap ``app.amqp.send_task_message`` so that its ``before_task_publish`` is known to be
    ``app``'s. The function is built on first use (it reads the app's configuration), so the
    builder is wrapped unless it was built already."""

    def marking(send: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(send)
        def send_task_message(*args: Any, **kwargs: Any) -> Any:
            previous = getattr(_publishing, "app", None)
            _publishing.app = app
            try:
                return send(*args, **kwargs)
            finally:
                _publishing.app = previous

        return send_task_message

    amqp = app.amqp
    built = amqp.__dict__.get("send_task_message")
    if built is not None:
        amqp.send_task_message = marking(built)
        return
    create = amqp._create_task_sender
    amqp._create_task_sender = lambda: marking(create())


def _message_of(task: Any, request: Any, args: Any, kwargs: Any) -> TaskMessage:
    """What a task's request (the message a worker received, or an eager call) tells."""
    return TaskMessage(
        task_id=str(request.id),
        task_name=str(task.name),
        args=request.args if args is None else args,
        kwargs=request.kwargs if kwargs is None else kwargs,
        eta=_parse_eta(getattr(request, "eta", None)),
        retries=int(getattr(request, "retries", 0) or 0),
        max_retries=_max_retries(task),
        parent_id=_text(getattr(request, "parent_id", None)),
        root_id=_text(getattr(request, "root_id", None)),
        group_id=_text(getattr(request, "group", None)),
        chord_id=_chord_id(getattr(request, "chord", None)),
        queued_by=_text(getattr(request, QUEUED_BY_HEADER, None)),
        replaced_nesting=int(getattr(request, "replaced_task_nesting", 0) or 0),
        eager=bool(getattr(request, "is_eager", False)),
    )


def _max_retries(task: Any) -> int | None:
    """The retries Celery allows the task: its autoretry policy's, else its ``max_retries``."""
    if task is None:
        return DEFAULT_MAX_RETRIES
    max_retries = getattr(task, "max_retries", DEFAULT_MAX_RETRIES)
    if getattr(task, "autoretry_for", None):
        policy = getattr(task, "retry_kwargs", None) or {}
        max_retries = policy.get("max_retries", max_retries)
    return None if max_retries is None else int(max_retries)


def _noted(exception: Any, traceback: str) -> NotedError:
    if isinstance(exception, SoftTimeLimitExceeded):
        code = NativeCode.SOFT_TIME_LIMIT
    elif isinstance(exception, TimeLimitExceeded):
        code = NativeCode.TIME_LIMIT
    elif isinstance(exception, WorkerLostError):
        code = NativeCode.WORKER_LOST
    else:
        return NotedError(type(exception).__name__, _describe(exception), traceback)
    return NotedError(code.value, _describe(exception), traceback, NATIVE_CODE_STATUS[code])


def _describe(exception: Any) -> str:
    try:
        return str(exception)
    except Exception:
        return f"<{type(exception).__name__}>"


def _traceback(einfo: Any) -> str:
    text = getattr(einfo, "traceback", None)
    return text if isinstance(text, str) else ""


def _chord_id(chord: Any) -> str | None:
    if not isinstance(chord, Mapping):
        return None
    options = chord.get("options")
    return _text(options.get("task_id")) if isinstance(options, Mapping) else None


def _text(value: Any) -> str | None:
    return None if value is None else str(value)[:255]


def _parse_eta(value: Any) -> datetime | None:
    if not value:
        return None
    try:
        eta = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    except ValueError:
        return None
    return eta if eta.tzinfo is not None else eta.replace(tzinfo=UTC)
