"""Whether a ``running`` runner row still has a live process behind it: a pure judgement.

PIDs are per host and get reused, so a runner on this host is judged by its PID *and* its
process's start time, and every runner, on any host, by the age of its heartbeat.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import psutil

PROCESS_START_TOLERANCE_SECONDS = 0.05
"""Two start times closer than this are the same process (psutil derives them from clock ticks)."""


@dataclass(frozen=True)
class RunnerRecord:
    """What the overseer knows of a runner row."""

    id: int
    process_id: int
    hostname: str
    process_create_time: float | None
    started_on: datetime
    heartbeat_on: datetime | None


@dataclass(frozen=True)
class Verdict:
    """The overseer's judgement of one runner."""

    alive: bool
    reason: str


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


def judge_runner(
    runner: RunnerRecord,
    *,
    this_host: str,
    now: datetime,
    heartbeat_timeout: float,
    start_time_of: ProcessStartLookup = process_start_time,
) -> Verdict:
    """Judge whether ``runner`` is alive."""
    last_sign_of_life = runner.heartbeat_on or runner.started_on
    silence = (now - last_sign_of_life).total_seconds()
    if silence > heartbeat_timeout:
        return Verdict(False, f"no heartbeat for {silence:.0f}s (limit {heartbeat_timeout:.0f}s)")
    if runner.hostname != this_host:
        return Verdict(True, "heartbeat is fresh")
    started = start_time_of(runner.process_id)
    if started is None:
        return Verdict(False, f"process {runner.process_id} is not running")
    if (
        runner.process_create_time is not None
        and abs(started - runner.process_create_time) > PROCESS_START_TOLERANCE_SECONDS
    ):
        return Verdict(False, f"PID {runner.process_id} now belongs to another process")
    return Verdict(True, "process is running")
