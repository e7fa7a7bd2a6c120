"""Handlers known by registered names; runner processes import it through TASKQ_IMPORTS."""

from __future__ import annotations

from typing import Any

from celery_taskq import RunContext, TaskHandler, register


@register("tests.reports.send")
class SendReport(TaskHandler):
    """Prints and returns who the report went to."""

    def validate(self, data: Any) -> None:
        if not isinstance(data, dict) or "to" not in data:
            raise ValueError('a report needs "to"')

    def handle_task_run(self, run: RunContext) -> Any:
        print(f"report sent to {run.data['to']}")
        return {"sent_to": run.data["to"]}


@register("send-greeting")
class SendGreeting(TaskHandler):
    """A registered name without dots."""

    def handle_task_run(self, run: RunContext) -> Any:
        return {"greeted": run.data.get("name", "world")}
