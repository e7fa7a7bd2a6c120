"""The native-task auditor without Celery: a failing audit never breaks the task."""

from __future__ import annotations

import logging

import pytest

from celery_taskq.celery.audit import NativeTaskAuditor, NotedError, TaskMessage, json_safe
from celery_taskq.celery.audit_message import attempt_end
from celery_taskq.core.queue import TaskQueueService


def broken_service() -> TaskQueueService:
    raise ConnectionError("database is down")


def test_audit_failures_are_logged_counted_and_swallowed(caplog: pytest.LogCaptureFixture) -> None:
    auditor = NativeTaskAuditor(get_service=broken_service, should_audit=lambda _: True)
    message = TaskMessage(task_id="abc-123", task_name="app.send", args=(1,))
    with caplog.at_level(logging.ERROR, logger="celery_taskq.celery.audit"):
        auditor.on_publish(message)
        auditor.on_start(message, worker_hostname="w@h", ignore_result=False)
    assert auditor.failures == 2
    messages = [record.getMessage() for record in caplog.records]
    assert messages == [
        "audit of Celery task abc-123 failed in on_publish",
        "audit of Celery task abc-123 failed in on_start",
    ]
    assert all(getattr(r, "action", None) == "audit_failed" for r in caplog.records)


def test_tasks_not_audited_are_left_alone() -> None:
    auditor = NativeTaskAuditor(get_service=broken_service, should_audit=lambda _: False)
    message = TaskMessage(task_id="x", task_name="app.other")
    auditor.on_publish(message)
    auditor.on_start(message, worker_hostname="w@h", ignore_result=False)
    auditor.on_revoked(message, terminated=False, expired=False)
    assert auditor.failures == 0


def test_json_safe_keeps_json_and_reprs_the_rest() -> None:
    assert json_safe({"a": [1, "b"], "c": None}) == {"a": [1, "b"], "c": None}
    assert json_safe({"when": {1, 2}}) == {"when": "{1, 2}"}


def test_which_tasks_are_audited() -> None:
    from celery import Celery

    from celery_taskq.celery import AuditedTask, install
    from celery_taskq.core.settings import Settings

    chosen_only = Celery("chosen", broker="memory://")
    state = install(chosen_only, settings=Settings())

    @chosen_only.task(name="chosen", base=AuditedTask)  # type: ignore[untyped-decorator]
    def chosen() -> None:
        """Audited: its base is AuditedTask."""

    @chosen_only.task(name="plain")  # type: ignore[untyped-decorator]
    def plain() -> None:
        """Not audited."""

    assert state.auditor is not None
    assert state.auditor.should_audit("chosen")
    assert not state.auditor.should_audit("plain")
    assert not state.auditor.should_audit("taskq.runner")

    everything = Celery("everything", broker="memory://")
    all_state = install(everything, settings=Settings(), audit_celery_tasks=True)
    assert all_state.auditor is not None

    @everything.task(name="opted_out", taskq_audit=False)  # type: ignore[untyped-decorator]
    def opted_out() -> None:
        """Never audited: the task says so."""

    assert all_state.auditor.should_audit("plain")
    assert not all_state.auditor.should_audit("opted_out")
    assert not all_state.auditor.should_audit("taskq.on_process")


def test_how_an_attempt_ended_follows_celerys_state() -> None:
    # Given the states Celery reports at task_postrun, with what the attempt noted
    error = NotedError("ValueError", "boom", "Traceback ...\n")

    def ended(state: str | None, retval: object = None, **noted: object) -> object:
        end = attempt_end(state, retval, **noted)  # type: ignore[arg-type]
        return None if end is None else (end.status.value, end.error_code, end.final)

    # Then each has its status, code and finality
    assert ended("SUCCESS", 5) == ("success", None, True)
    assert ended("SUCCESS", 5, ignore_result=True) == ("success", "result_ignored", True)
    assert ended("FAILURE", error=error) == ("error", "ValueError", True)
    assert ended("RETRY", error=error) == ("error", "ValueError", False)
    assert ended("RETRY") == ("error", "retry", False)
    assert ended("REJECTED", requeue=True) == ("error", "rejected_requeued", False)
    assert ended("REJECTED") == ("error", "rejected", True)
    assert ended("IGNORED") == ("success", "ignored", True)
    assert ended("IGNORED", replaced=True) == ("success", "replaced", False)
    assert ended(None) is None
