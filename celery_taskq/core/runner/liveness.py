"""Whether a ``running`` runner row may lose its runs: a pure judgement, and the kill it may ask.

A runner holds a lease on its runs (:mod:`celery_taskq.core.runner.lease`) that lasts ``lease``
seconds (``TASKQ_HEARTBEAT_TIMEOUT``) after its last heartbeat. Its runs may go to another runner
only when it can no longer be executing them:

* **Same machine** — same host name *and* same PID namespace as the overseer: the runner is
  judged by its PID and its process's start time (PIDs get reused). A process that is gone is
  dead at once. A process that is still there but silent past its lease (stopped, hung, or
  holding the GIL) is killed first (:func:`kill_runner_process`), then judged dead.
* **Elsewhere** — another host, or a container of this host with a PID namespace of its own:
  its PID means nothing here, so it is dead only once its lease expired more than ``margin``
  seconds ago. By then the kernel has ended its process if it held a run (its lease is fenced),
  and the margin covers the clock difference between the two machines.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import psutil

PROCESS_START_TOLERANCE_SECONDS = 0.05
"""Two start times closer than this are the same process (psutil derives them from clock ticks)."""

KILL_CONFIRM_SECONDS = 5.0
"""How long the overseer waits for a process it killed to be gone."""


@dataclass(frozen=True)
class RunnerRecord:
    """What the overseer knows of a runner row."""

    id: int
    process_id: int
    hostname: str
    process_create_time: float | None
    started_on: datetime
    heartbeat_on: datetime | None
    process_namespace: str | None = None
    holds_runs: bool = True
    """A task runner (``True``), or a Celery worker process recording native tasks, which the
    overseer never kills: Celery, not celery_taskq, delivers those tasks."""


@dataclass(frozen=True)
class Verdict:
    """The overseer's judgement of one runner.

    ``kill_first``: the runner's process is alive on this machine but out of its lease; it
    loses its runs only once :func:`kill_runner_process` has ended it.
    """

    alive: bool
    reason: str
    kill_first: bool = False


ProcessStartLookup = Callable[[int], float | None]
"""Start time (epoch seconds) of the live process with this PID on this host, or ``None``."""


def process_start_time(pid: int) -> float | None:
    """psutil's start time of a live process, or ``None`` when there is none (or a zombie)."""
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return None
        return float(process.create_time())
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None
    except psutil.AccessDenied:
        # The process exists but belongs to someone else: it is not a runner we started.
        return -1.0


def on_same_machine(runner: RunnerRecord, this_host: str, this_namespace: str | None) -> bool:
    """Whether the runner's PID can be looked up here: same host name and PID namespace."""
    return runner.hostname == this_host and runner.process_namespace == this_namespace


def judge_runner(
    runner: RunnerRecord,
    *,
    this_host: str,
    now: datetime,
    heartbeat_timeout: float,
    lease_margin: float = 0.0,
    this_namespace: str | None = None,
    start_time_of: ProcessStartLookup = process_start_time,
) -> Verdict:
    """Judge whether ``runner`` may lose its runs (see the module docstring)."""
    silence = (now - (runner.heartbeat_on or runner.started_on)).total_seconds()
    if not on_same_machine(runner, this_host, this_namespace):
        return judge_by_lease(silence, heartbeat_timeout, lease_margin)
    started = start_time_of(runner.process_id)
    if started is None:
        return Verdict(False, f"process {runner.process_id} is not running")
    if (
        runner.process_create_time is not None
        and abs(started - runner.process_create_time) > PROCESS_START_TOLERANCE_SECONDS
    ):
        return Verdict(False, f"PID {runner.process_id} now belongs to another process")
    if silence > heartbeat_timeout and not runner.holds_runs:
        return Verdict(False, f"no heartbeat for {silence:.0f}s (limit {heartbeat_timeout:g}s)")
    if silence > heartbeat_timeout:
        return Verdict(
            False,
            f"process {runner.process_id} is alive but sent no heartbeat for {silence:.0f}s "
            f"(lease {heartbeat_timeout:g}s): it is killed first",
            kill_first=True,
        )
    return Verdict(True, "process is running")


def judge_by_lease(silence: float, lease: float, margin: float) -> Verdict:
    """The judgement of a runner whose process cannot be looked up: by its lease alone."""
    if silence > lease + margin:
        return Verdict(
            False,
            f"no heartbeat for {silence:.0f}s: its lease ({lease:g}s) expired more than "
            f"{margin:g}s ago",
        )
    return Verdict(True, "its lease is current")


def kill_runner_process(
    pid: int,
    create_time: float | None,
    *,
    confirm_seconds: float = KILL_CONFIRM_SECONDS,
    start_time_of: ProcessStartLookup = process_start_time,
) -> bool:
    """SIGKILL the runner process ``pid`` (if it is still the one started at ``create_time``)
    and wait until it is gone; whether it is gone."""
    try:
        process = psutil.Process(pid)
        if (
            create_time is not None
            and abs(process.create_time() - create_time) > PROCESS_START_TOLERANCE_SECONDS
        ):
            return True  # the PID belongs to another process: the runner is gone
        process.kill()  # psutil checks that the PID still names the same process
    except psutil.NoSuchProcess:
        return True
    except psutil.AccessDenied:
        return False
    deadline = time.monotonic() + confirm_seconds
    while time.monotonic() < deadline:
        started = start_time_of(pid)
        if started is None or (
            create_time is not None and abs(started - create_time) > PROCESS_START_TOLERANCE_SECONDS
        ):
            return True
        time.sleep(0.01)
    return False


def current_process_start_time() -> float:
    """This process's start time as psutil reports it (recorded on the runner row)."""
    return float(psutil.Process(os.getpid()).create_time())
