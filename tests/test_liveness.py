"""The overseer's judgement of a runner: pure rules, plus the real psutil lookup."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta

from celery_taskq.liveness import RunnerRecord, judge_runner, process_start_time

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


def test_stale_heartbeat_is_dead_on_any_host() -> None:
    stale = record(hostname="there", heartbeat_on=NOW - timedelta(seconds=61))
    verdict = judge_runner(stale, this_host="here", now=NOW, heartbeat_timeout=60)
    assert not verdict.alive
    assert "no heartbeat" in verdict.reason


def test_start_time_is_used_when_no_heartbeat_yet() -> None:
    silent = record(hostname="there", heartbeat_on=None, started_on=NOW - timedelta(seconds=90))
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
