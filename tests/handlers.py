"""Handlers used by the tests (importable by runner child processes as ``tests.handlers``)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

from celery_taskq import RunContext, TaskError, TaskHandler


class Succeed(TaskHandler):
    """Returns its data."""

    def handle_task_run(self, run: RunContext) -> Any:
        return {"echo": run.data}


class Talk(TaskHandler):
    """Writes to stdout and stderr from Python and from a child process."""

    def handle_task_run(self, run: RunContext) -> Any:
        print("python says hi")
        print("python complains", file=sys.stderr)
        os.system("echo x")  # noqa: S605 - the point: a child process's output
        os.system("echo child-err >&2")  # noqa: S605
        return None


class AlwaysFail(TaskHandler):
    """Fails with a known error."""

    def handle_task_run(self, run: RunContext) -> Any:
        run.set_progress(40)
        raise TaskError("the mail server refused", code="E_SMTP")


class Crash(TaskHandler):
    """Fails with an unexpected exception."""

    def handle_task_run(self, run: RunContext) -> Any:
        raise ValueError("bad value 42")


class ReturnsSet(TaskHandler):
    """Returns something JSON cannot hold."""

    def handle_task_run(self, run: RunContext) -> Any:
        return {1, 2}


class FailUntilAttempt(TaskHandler):
    """Fails until it has been called ``succeed_on`` times (counted in ``counter_file``)."""

    def handle_task_run(self, run: RunContext) -> Any:
        counter = Path(run.data["counter_file"])
        attempt = int(counter.read_text()) + 1 if counter.exists() else 1
        counter.write_text(str(attempt))
        if attempt < run.data["succeed_on"]:
            raise TaskError(f"attempt {attempt} failed", code="E_NOT_YET")
        return {"attempt": attempt}


class Sleep(TaskHandler):
    """Reports progress, then sleeps ``seconds`` and succeeds."""

    def handle_task_run(self, run: RunContext) -> Any:
        run.set_progress(40)
        print("sleeping", flush=True)
        time.sleep(float(run.data.get("seconds", 1)))
        return {"slept": run.data.get("seconds", 1)}


class HangOnce(TaskHandler):
    """Hangs on its first run (marked by creating ``marker``); succeeds on the next."""

    def handle_task_run(self, run: RunContext) -> Any:
        marker = Path(run.data["marker"])
        if not marker.exists():
            marker.write_text("started")
            time.sleep(600)
        return {"second": True}


class RefuseNegative(TaskHandler):
    """Refuses data with a negative ``n`` before enqueue."""

    def validate(self, data: Any) -> None:
        if data.get("n", 0) < 0:
            raise ValueError("n must not be negative")

    def handle_task_run(self, run: RunContext) -> Any:
        return run.data["n"]


class NotAHandler:
    """A class that is not a TaskHandler."""


class WorkUntilCancelled(TaskHandler):
    """Reports progress in small steps for up to 30 s; stops when the task is cancelled."""

    def handle_task_run(self, run: RunContext) -> Any:
        print("working", flush=True)
        deadline = time.monotonic() + 30
        step = 0
        while time.monotonic() < deadline:
            step += 1
            run.set_progress(step % 100)  # raises TaskCancelledError once cancelled
            time.sleep(0.05)
        return {"steps": step}


class FailFastRetry(AlwaysFail):
    """Fails, with its own short retry backoff."""

    retry_backoff_base = 5.0


class Steps(TaskHandler):
    """Works through ``data["steps"]`` steps of ``data["pause"]`` seconds, reporting each."""

    def handle_task_run(self, run: RunContext) -> Any:
        steps = int(run.data.get("steps", 4))
        for step in range(1, steps + 1):
            run.set_progress(
                step * 100 // steps, step=step, steps=steps, status=f"doing step {step}"
            )
            time.sleep(float(run.data.get("pause", 0.3)))
        return {"steps": steps}
