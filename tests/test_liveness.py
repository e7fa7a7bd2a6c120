"""The overseer's judgement of a runner: pure rules, plus the real psutil lookup."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import psutil

from celery_taskq.core.runner.liveness import (
    RunnerRecord,
    judge_runner,
    kill_runner_process,
    process_start_time,
)

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def record(**changes: object) -> RunnerRecord:
    values: dict[str, object] = {
        "id": 1,
        "process_id": 4242,
        "hostname": "here",
        "process_create_time": 1000.0,
        "started_on": NOW - timedelta(seconds=30),
        "heartbeat_on": NOW - timedelta(seconds=5),
    }
    values.update(changes)
    return RunnerRecord(**values)  # type: ignore[arg-type]


def test_same_host_process_with_same_start_time_is_alive() -> None:
    verdict = judge_runner(
        record(), this_host="here", now=NOW, heartbeat_timeout=60, start_time_of=lambda _: 1000.0
    )
    assert verdict.alive


def test_same_host_process_gone_is_dead() -> None:
    verdict = judge_runner(
        record(), this_host="here", now=NOW, heartbeat_timeout=60, start_time_of=lambda _: None
    )
    assert not verdict.alive
    assert "not running" in verdict.reason


def test_reused_pid_is_dead() -> None:
    # Given the PID now belongs to a process that started later
    verdict = judge_runner(
        record(), this_host="here", now=NOW, heartbeat_timeout=60, start_time_of=lambda _: 2000.0
    )
    assert not verdict.alive
    assert "another process" in verdict.reason


def test_other_host_with_fresh_heartbeat_is_alive_without_looking_at_pids() -> None:
    def no_lookup(_: int) -> float | None:
        raise AssertionError("a PID of another host must not be looked up here")

    verdict = judge_runner(
        record(hostname="there"),
        this_host="here",
        now=NOW,
        heartbeat_timeout=60,
        start_time_of=no_lookup,
    )
    assert verdict.alive


def test_stale_heartbeat_of_another_host_is_dead_once_past_the_margin() -> None:
    def judge(silence: float) -> bool:
        stale = record(hostname="there", heartbeat_on=NOW - timedelta(seconds=silence))
        verdict = judge_runner(
            stale, this_host="here", now=NOW, heartbeat_timeout=60, lease_margin=10
        )
        return verdict.alive

    assert judge(61)  # the lease expired, but the runner may still be fencing itself
    assert judge(70)
    assert not judge(71)


def test_another_pid_namespace_of_this_host_is_judged_by_its_lease_alone() -> None:
    def no_lookup(_: int) -> float | None:
        raise AssertionError("a PID of another namespace must not be looked up here")

    runner = record(process_namespace="pid:[2]")
    fresh = judge_runner(
        runner,
        this_host="here",
        this_namespace="pid:[1]",
        now=NOW,
        heartbeat_timeout=60,
        start_time_of=no_lookup,
    )
    assert fresh.alive
    stale = judge_runner(
        record(process_namespace="pid:[2]", heartbeat_on=NOW - timedelta(seconds=75)),
        this_host="here",
        this_namespace="pid:[1]",
        now=NOW,
        heartbeat_timeout=60,
        lease_margin=10,
        start_time_of=no_lookup,
    )
    assert not stale.alive
    assert not stale.kill_first


def test_live_process_of_this_machine_past_its_lease_is_killed_first() -> None:
    # Given a runner of this host and namespace, alive (same start time) but silent
    silent = record(heartbeat_on=NOW - timedelta(seconds=61))
    verdict = judge_runner(
        silent, this_host="here", now=NOW, heartbeat_timeout=60, start_time_of=lambda _: 1000.0
    )
    # Then it loses its runs only after it was killed
    assert not verdict.alive
    assert verdict.kill_first


def test_a_celery_worker_process_row_is_never_killed() -> None:
    silent = record(heartbeat_on=NOW - timedelta(seconds=61), holds_runs=False)
    verdict = judge_runner(
        silent, this_host="here", now=NOW, heartbeat_timeout=60, start_time_of=lambda _: 1000.0
    )
    assert not verdict.alive
    assert not verdict.kill_first


def test_kill_runner_process_ends_a_stopped_process_and_spares_a_reused_pid() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        started = psutil.Process(child.pid).create_time()
        os.kill(child.pid, signal.SIGSTOP)
        # A start time that is not the process's: the PID belongs to another process now
        assert kill_runner_process(child.pid, started - 100)
        assert child.poll() is None
        # The runner's own start time: the stopped process is killed and found gone
        assert kill_runner_process(child.pid, started)
        assert child.wait(timeout=10) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def test_start_time_is_used_when_no_heartbeat_yet() -> None:
    silent = record(hostname="there", heartbeat_on=None, started_on=NOW - timedelta(seconds=90))
    assert judge_runner(
        silent, this_host="here", now=NOW, heartbeat_timeout=60, lease_margin=40
    ).alive
    assert not judge_runner(silent, this_host="here", now=NOW, heartbeat_timeout=60).alive


def test_real_lookup_of_this_process_and_of_a_zombie() -> None:
    assert process_start_time(os.getpid()) is not None
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    # Given an exited child that nobody reaped (a zombie): it counts as gone
    os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)
    try:
        assert process_start_time(child.pid) is None
    finally:
        child.wait()
    assert process_start_time(child.pid) is None
