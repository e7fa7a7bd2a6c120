"""Handlers used by the tests (importable by runner child processes as ``tests.handlers``)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

from celery_taskq import Continue, RunContext, TaskError, TaskHandler


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


class RecordStep(TaskHandler):
    """A step: appends ``data["name"]`` to the file ``data["log"]``; fails as ``data`` says.

    ``fail`` fails every time; ``fail_once`` (a marker file path) fails the first time only.
    """

    def validate(self, data: Any) -> None:
        if not isinstance(data, dict) or "name" not in data or "log" not in data:
            raise ValueError('a step needs "name" and "log"')

    def handle_task_run(self, run: RunContext) -> Any:
        with open(run.data["log"], "a") as log:
            log.write(run.data["name"] + "\n")
        print(f"step {run.data['name']} ran")
        run.set_progress(50)
        if run.data.get("fail"):
            raise TaskError(f"{run.data['name']} refused", code="E_STEP")
        marker = run.data.get("fail_once")
        if marker and not Path(marker).exists():
            Path(marker).write_text("failed once")
            raise TaskError(f"{run.data['name']} failed once", code="E_ONCE")
        return {"name": run.data["name"]}


class Chunked(TaskHandler):
    """Handles items ``checkpoint["next"]`` onwards, ``data["per_run"]`` per run (or until the
    run's deadline), logging each item to ``data["log"]``; continues until ``data["total"]``."""

    def handle_task_run(self, run: RunContext) -> Any:
        start = run.checkpoint["next"] if run.checkpoint else 0
        total = int(run.data["total"])
        per_run = int(run.data.get("per_run", total))
        item = start
        while item < total and item - start < per_run:
            if item > start and run.out_of_time:
                break
            with open(run.data["log"], "a") as log:
                log.write(f"{item}\n")
            time.sleep(float(run.data.get("pause", 0)))
            item += 1
        if item < total:
            return Continue({"next": item}, results={"handled": [start, item]})
        return {"done": total}


class ChunkedFast(Chunked):
    """Chunked with a short time budget."""

    time_budget = 0.3


class ResumeAfterCrash(TaskHandler):
    """First run: saves a checkpoint, then fails. Later runs: return the checkpoint they got."""

    def handle_task_run(self, run: RunContext) -> Any:
        if run.checkpoint is None:
            run.save_checkpoint({"next": 2})
            raise TaskError("crashed after the checkpoint", code="E_CRASH")
        return {"resumed_from": run.checkpoint}


class HalveBatchOnFailure(TaskHandler):
    """Fails while ``data["batch"]`` is over 10; after each failure halves it for the retry."""

    def validate(self, data: Any) -> None:
        if not isinstance(data, dict) or not isinstance(data.get("batch"), int):
            raise ValueError('"batch" must be an integer')

    def handle_task_run(self, run: RunContext) -> Any:
        if run.data["batch"] > 10:
            raise TaskError(f"batch of {run.data['batch']} is too big", code="E_TOO_BIG")
        return {"batch": run.data["batch"]}

    def change_data_on_error(self, data: Any, error: BaseException) -> Any:
        return {"batch": data["batch"] // 2}


class ChangeToInvalidData(HalveBatchOnFailure):
    """Its change_data_on_error returns data its validate refuses."""

    def change_data_on_error(self, data: Any, error: BaseException) -> Any:
        return {"batch": "many"}


class FailWithResults(TaskHandler):
    """Fails, reporting what it did before the failure."""

    def handle_task_run(self, run: RunContext) -> Any:
        raise TaskError("half done", code="E_HALF", results={"done": 5, "of": 10})


class ContinueWithoutJson(TaskHandler):
    """Returns a checkpoint that JSON cannot hold."""

    def handle_task_run(self, run: RunContext) -> Any:
        return Continue({1, 2})


class Echo(TaskHandler):
    """Prints ``data["text"]`` to stdout and stderr, fails with it as the message when
    ``data["fail"]``, and otherwise returns it (the dashboard's escaping tests use markup)."""

    def handle_task_run(self, run: RunContext) -> Any:
        text = str(run.data.get("text", ""))
        print(text, flush=True)
        print(text, file=sys.stderr, flush=True)
        if run.data.get("fail"):
            raise TaskError(text, code="E_ECHO")
        return {"text": text}


class SeeOwnRun(TaskHandler):
    """Returns its run's ``Status`` as the database holds it when the handler starts, read on
    a connection of its own to ``data["database_url"]``."""

    def handle_task_run(self, run: RunContext) -> Any:
        from sqlalchemy import select

        from celery_taskq.core.models import TaskRun
        from celery_taskq.core.storage.database import Database

        database = Database(str(run.data["database_url"]))
        try:
            with database.transaction(read_only=True) as connection:
                status = connection.execute(
                    select(TaskRun.status).where(TaskRun.id == run.id)
                ).scalar_one()
        finally:
            database.close()
        return {"status_at_start": str(status)}
