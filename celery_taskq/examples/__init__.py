"""Sample handlers, used by ``celery-taskq demo`` and as templates for your own.

* :class:`Greet` and :class:`CheckInbox` here: a task that succeeds and one that fails.
* :mod:`celery_taskq.examples.backup`: the steps of a multi-step task.
* :mod:`celery_taskq.examples.resumable`: long work in time-boxed chunks that resume.
"""

from __future__ import annotations

import os
from typing import Any

from celery_taskq import RunContext, TaskError, TaskHandler


class Greet(TaskHandler):
    """Greets ``data["name"]`` in a few steps, reporting progress; returns the greeting."""

    def validate(self, data: Any) -> None:
        """Refuse data without a non-empty ``name``."""
        if not isinstance(data, dict) or not str(data.get("name", "")).strip():
            raise ValueError('data must be an object with a non-empty "name"')

    def handle_task_run(self, run: RunContext) -> Any:
        """Print the greeting from Python and from a child process."""
        greeting = f"Hello, {run.data['name']}!"
        print(greeting)
        run.set_progress(50)
        os.system("echo 'a child process writes here too'")  # noqa: S605, S607
        run.set_progress(100)
        return {"greeting": greeting}


class CheckInbox(TaskHandler):
    """Fails with a known error code: shows how a failure and its retries are recorded."""

    def handle_task_run(self, run: RunContext) -> Any:
        """Always refuse, like a mail server that is down."""
        print(f"connecting to {run.data.get('server', 'mail.example.invalid')}")
        raise TaskError("the mail server did not answer", code="E_MAIL_DOWN")
