"""Handlers that misbehave, for the fault tests (importable by runner processes)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from celery_taskq import RunContext, TaskHandler

MEGABYTE = 1024 * 1024

_leaked: list[bytes] = []
"""What :class:`Leak` keeps alive for the life of its process."""


class FloodStdout(TaskHandler):
    """Writes ``data["megabytes"]`` MiB of text to fd 1, then returns how much it wrote."""

    def handle_task_run(self, run: RunContext) -> Any:
        chunk = b"0123456789abcdef" * (MEGABYTE // 16)
        megabytes = int(run.data["megabytes"])
        for _ in range(megabytes):
            os.write(1, chunk)
        return {"written": megabytes * MEGABYTE}


BINARY_STDOUT = b"text \xff\xfe\x00 more \xc3( end\n"
BINARY_STDERR = b"\x80\x81 err\n"


class BinaryOutput(TaskHandler):
    """Writes bytes that are not UTF-8 (and a NUL) to stdout and stderr."""

    def handle_task_run(self, run: RunContext) -> Any:
        os.write(1, BINARY_STDOUT)
        os.write(2, BINARY_STDERR)
        return None


GRANDCHILD_SCRIPT = (
    "import subprocess, sys; "
    "subprocess.run([sys.executable, '-c', "
    "\"import sys; print('grandchild out'); print('grandchild err', file=sys.stderr)\"], "
    "check=True)"
)


class Grandchild(TaskHandler):
    """Starts a process that starts a process; the grandchild writes to stdout and stderr."""

    def handle_task_run(self, run: RunContext) -> Any:
        subprocess.run([sys.executable, "-c", GRANDCHILD_SCRIPT], check=True)
        return None


class ExitOnce(TaskHandler):
    """First run: prints, creates ``marker`` and ends the process with ``os._exit(3)``.

    Later runs succeed.
    """

    def handle_task_run(self, run: RunContext) -> Any:
        marker = Path(run.data["marker"])
        if not marker.exists():
            print("about to exit", flush=True)
            marker.write_text("exited")
            os._exit(3)
        return {"second": True}


class HangSleep(TaskHandler):
    """Prints, then sleeps for an hour; limited to half a second."""

    time_limit = 0.5

    def handle_task_run(self, run: RunContext) -> Any:
        run.set_progress(30)
        print("before hanging", flush=True)
        time.sleep(3600)
        return None


class HangBusy(TaskHandler):
    """Prints, then spins in a Python loop forever; limited to half a second."""

    time_limit = 0.5

    def handle_task_run(self, run: RunContext) -> Any:
        print("before spinning", flush=True)
        spins = 0
        while spins >= 0:
            spins += 1
        return spins


class SwallowAndReturn(TaskHandler):
    """Catches the time-limit stop and returns as if all went well."""

    time_limit = 0.3

    def handle_task_run(self, run: RunContext) -> Any:
        try:
            time.sleep(3600)
        except BaseException:  # the misbehaviour under test
            return {"pretended": "success"}
        return None


class Unstoppable(TaskHandler):
    """Swallows every stop and keeps sleeping: only ending the process stops it."""

    time_limit = 0.5

    def handle_task_run(self, run: RunContext) -> Any:
        print("unstoppable started", flush=True)
        deadline = time.monotonic() + 3600
        while time.monotonic() < deadline:
            try:
                time.sleep(3600)
            except BaseException:  # the misbehaviour under test
                print("swallowed a stop", flush=True)
        return None


class SleepFor(TaskHandler):
    """Sleeps ``data["seconds"]``; no limit of its own (the configured one applies)."""

    def handle_task_run(self, run: RunContext) -> Any:
        time.sleep(float(run.data["seconds"]))
        return {"slept": run.data["seconds"]}


class SleepWithoutLimit(SleepFor):
    """Sleeps ``data["seconds"]`` with its limit switched off, whatever is configured."""

    time_limit = 0


class Leak(TaskHandler):
    """Keeps ``data["megabytes"]`` MiB alive in its process after the run, and succeeds."""

    def handle_task_run(self, run: RunContext) -> Any:
        _leaked.append(b"x" * (int(run.data["megabytes"]) * MEGABYTE))
        return {"leaked_megabytes": run.data["megabytes"]}
