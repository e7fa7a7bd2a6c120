"""What a Celery client sees when it drives tests/behaviour_app.py's tasks, scenario by scenario.

Run as ``python -m tests.behaviour_scenarios`` beside a worker of the same app: it reads one
request a line on stdin (``{"scenario": name, **arguments}``) and answers each with one line of
JSON on the descriptor ``BEHAVIOUR_REPLY_FD``, keeping stdout and stderr for what eager tasks
print. Each scenario returns what Celery lets a client observe (results, states, exception
types, retry counts, what reached the worker's output), with the ids and times that differ
from run to run taken out, so a plain app and an installed one can be compared as equal.
"""

from __future__ import annotations

import json
import os
import re
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from celery import chain, chord, group
from celery.canvas import Signature, StampingVisitor
from celery.result import AsyncResult

from tests.behaviour_app import (
    add,
    app,
    autoretry,
    chatter,
    db_add,
    die,
    die_once,
    echo,
    fail,
    hard_limit,
    ignore,
    reject,
    replaced,
    retry_exhausted,
    retry_then_succeed,
    sleep_for,
    soft_limit,
    soft_limit_caught,
    stamps,
    tsum,
    wait_for_file,
    when_run,
)

TIMEOUT = 30.0
"""Seconds a scenario waits for any one result."""

SCENARIOS: dict[str, Callable[..., Any]] = {}

_TASK_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def scenario(function: Callable[..., Any]) -> Callable[..., Any]:
    """Register ``function`` under its name."""
    SCENARIOS[function.__name__] = function
    return function


def _flag() -> str:
    return str(Path(os.environ["BEHAVIOUR_DIR"]) / f"flag-{uuid.uuid4().hex}")


def _error(value: BaseException) -> list[str]:
    # A WorkerLostError names the pool's job number, which differs from worker to worker.
    return [type(value).__name__, re.sub(r"Job: \d+", "Job: N", str(value))]


def observed(result: AsyncResult, *, wait: bool = True) -> dict[str, Any]:
    """What a client sees of ``result``: state, value or exception, the traceback's type."""
    if wait:
        result.get(timeout=TIMEOUT, propagate=False)
    value = result.result
    seen: dict[str, Any] = {"state": result.state}
    if isinstance(value, BaseException):
        seen["error"] = _error(value)
        lines = [line for line in (result.traceback or "").splitlines() if line.strip()]
        seen["traceback_type"] = lines[-1].split(":")[0] if lines else None
    else:
        seen["value"] = value
    return seen


@scenario
def canvas() -> dict[str, Any]:
    """Chain, group, chord, chunks, map and starmap, and a chain broken by a failure."""
    chained = chain(add.s(1, 2), add.s(3), add.s(4)).apply_async()
    broken = chain(add.s(1, 1), fail.si(), add.s(1)).apply_async()
    grouped = group(add.s(index, index) for index in range(5)).apply_async()
    chorded = chord((add.s(index, index) for index in range(4)), tsum.s()).apply_async()
    chunked = add.chunks(list(zip(range(6), range(6), strict=True)), 3).group().apply_async()
    mapped = tsum.map([[1, 2], [3, 4]]).delay()
    starmapped = add.starmap([(1, 2), (3, 4)]).delay()
    parents = []
    node: AsyncResult | None = chained
    chained.get(timeout=TIMEOUT)
    while node is not None:
        parents.append(observed(node))
        node = node.parent
    return {
        "chain": parents,
        "broken_chain": observed(broken),
        "broken_chain_first": observed(broken.parent.parent),
        "group": grouped.get(timeout=TIMEOUT),
        "group_states": [child.state for child in grouped.results],
        "chord": chorded.get(timeout=TIMEOUT),
        "chunks": chunked.get(timeout=TIMEOUT),
        "map": mapped.get(timeout=TIMEOUT),
        "starmap": starmapped.get(timeout=TIMEOUT),
    }


@scenario
def results() -> dict[str, Any]:
    """A success and a failure as the Redis result backend keeps them, and the database one."""
    succeeded = add.delay(2, 2)
    failed = fail.delay()
    in_database = db_add.delay(2, 3)
    return {
        "success": observed(succeeded),
        "failure": observed(failed),
        "database_backend": observed(in_database),
        "database_backend_class": type(db_add.backend).__name__,
        "successful": [succeeded.successful(), failed.successful()],
    }


@scenario
def retries() -> dict[str, Any]:
    """``self.retry()`` and autoretry, each succeeding after retries and running out of them."""
    return {
        name: observed(result)
        for name, result in (
            ("retry_then_succeed", retry_then_succeed.delay()),
            ("retry_exhausted", retry_exhausted.delay()),
            ("autoretry_then_succeed", autoretry.delay(2)),
            ("autoretry_exhausted", autoretry.delay(5)),
        )
    }


@scenario
def revoke() -> dict[str, Any]:
    """Revoked before it starts, and terminated while it runs (its state until then)."""
    waiting = sleep_for.apply_async((0.1,), countdown=3)
    waiting.revoke()
    flag = _flag()
    running = sleep_for.delay(30, flag)
    started = wait_for_file(flag)
    state_while_running = running.state
    running.revoke(terminate=True)
    return {
        "before_start": observed(waiting),
        "started": started,
        "state_while_running": state_while_running,
        "terminated": observed(running),
    }


@scenario
def eta_and_expires() -> dict[str, Any]:
    """Countdown and ETA run no sooner than asked; expired messages are not run."""
    sent_at = time.time()
    counted = when_run.apply_async(countdown=1)
    timed = when_run.apply_async(eta=datetime.now(UTC) + timedelta(seconds=1))
    expired_on_arrival = add.apply_async((1, 1), expires=datetime.now(UTC) - timedelta(seconds=5))
    expired_while_waiting = add.apply_async((1, 1), countdown=1.5, expires=0.5)
    return {
        "countdown_respected": counted.get(timeout=TIMEOUT) >= sent_at + 1,
        "eta_respected": timed.get(timeout=TIMEOUT) >= sent_at + 1,
        "expired_on_arrival": observed(expired_on_arrival),
        "expired_while_waiting": observed(expired_while_waiting),
    }


@scenario
def worker_lost() -> dict[str, Any]:
    """``acks_late`` with and without ``reject_on_worker_lost`` when the pool process dies."""
    return {
        "reject_on_worker_lost": observed(die_once.delay(_flag())),
        "acks_late_only": observed(die.delay()),
    }


@scenario
def time_limits() -> dict[str, Any]:
    """A soft limit caught and not caught, and a hard limit."""
    return {
        "soft_caught": observed(soft_limit_caught.delay()),
        "soft": observed(soft_limit.delay()),
        "hard": observed(hard_limit.delay()),
    }


@scenario
def ignore_and_reject() -> dict[str, Any]:
    """``Ignore`` and ``Reject``: the state the result settles in once the task ran."""
    seen = {}
    for name, task, settle in (("ignore", ignore, 1.0), ("reject", reject, 10.0)):
        flag = _flag()
        result = task.delay(flag)
        ran = wait_for_file(flag)
        # Ignore leaves the state as it is: a second is long enough to see nothing come.
        deadline = time.monotonic() + settle
        while result.state == "PENDING" and time.monotonic() < deadline:
            time.sleep(0.05)
        seen[name] = {"ran": ran, **observed(result, wait=False)}
    return seen


@scenario
def eager() -> dict[str, Any]:
    """The same tasks run eagerly in this process (``task_always_eager`` and ``apply()``)."""
    app.conf.task_always_eager = True
    try:
        seen = {
            "add": observed(add.delay(1, 2)),
            "failure": observed(fail.delay()),
            "retry_then_succeed": observed(retry_then_succeed.delay()),
            "autoretry": observed(autoretry.delay(1)),
            "chain": chain(add.s(1, 2), add.s(3)).delay().get(timeout=TIMEOUT),
            "echo": observed(echo.delay("behaviour-eager", "")),
        }
    finally:
        app.conf.task_always_eager = False
    seen["apply"] = observed(add.apply((5, 5)))
    seen["apply_failure"] = observed(fail.apply())
    sys.stdout.flush()
    sys.stderr.flush()
    return seen


class _Mark(StampingVisitor):  # type: ignore[misc]
    def on_signature(self, sig: Signature, **headers: Any) -> dict[str, Any]:
        return {"behaviour_mark": "stamped"}


@scenario
def stamping() -> dict[str, Any]:
    """A stamped signature: the stamps reach the task."""
    signature = stamps.s()
    signature.stamp(visitor=_Mark())
    return {"stamped": observed(signature.apply_async())}


@scenario
def replace() -> dict[str, Any]:
    """``Task.replace()``: the caller gets the replacement's result."""
    return {"replaced": observed(replaced.delay())}


@scenario
def active_queues() -> list[list[str]]:
    """The queues each worker consumes, as ``inspect active_queues`` reports them."""
    replies = app.control.inspect(timeout=5, limit=1).active_queues() or {}
    return sorted(sorted(queue["name"] for queue in queues) for queues in replies.values())


@scenario
def output(fail: bool = False) -> dict[str, Any]:
    """A task's print() to stdout and stderr and its log line reach the worker's output while
    the task is still running, and Celery's own lines about it follow (for a failure, with
    its traceback)."""
    worker_log = Path(os.environ["BEHAVIOUR_WORKER_LOG"])
    marker = f"behaviour-echo-{uuid.uuid4().hex}"  # this run's lines, whatever ran before
    flag = _flag()
    result = echo.delay(marker, flag, fail)
    wanted = (f"{marker} on stdout", f"{marker} on stderr", f"{marker} in the task log")
    deadline = time.monotonic() + 10
    while not all(text in worker_log.read_text(errors="replace") for text in wanted):
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    log = worker_log.read_text(errors="replace")
    seen_live = {text.replace(marker, "<marker>"): text in log for text in wanted}
    Path(flag).touch()
    seen = json.loads(json.dumps(observed(result)).replace(marker, "<marker>"))
    time.sleep(0.5)  # the worker logs the outcome after storing the result
    log = worker_log.read_text(errors="replace")
    # From the line of the task's first print (this side runs one scenario at a time)
    since = log[log.rfind("\n", 0, log.find(marker)) + 1 :]
    lines = [
        _log_message(line.replace(marker, "<marker>"))
        for line in since.splitlines()
        if marker in line or result.id in line
    ]
    return {
        "seen_live": seen_live,
        "result": seen,
        "lines": lines,
        "tracebacks_logged": since.count("Traceback (most recent call last)"),
        "task_id": result.id,
        "marker": marker,
    }


def _log_message(line: str) -> str:
    # "[2026-01-01 12:00:00,000: WARNING/ForkPoolWorker-1] text": the level and the text.
    head, found, text = line.partition("] ")
    if not found:  # a traceback's line
        return line
    level = head.rsplit(": ", 1)[-1].split("/")[0]
    text = _TASK_ID.sub("<id>", text)
    return f"{level} " + re.sub(r" in [0-9.e-]+s", " in <t>s", text)


@scenario
def threads(threads: int, per_thread: int) -> dict[str, Any]:
    """``threads`` threads publish at once; every result comes back."""
    ids: list[str] = []
    values: list[int] = []
    lock = threading.Lock()
    start = threading.Barrier(threads)

    def publish(offset: int) -> None:
        start.wait(timeout=TIMEOUT)
        sent = [add.delay(offset, index) for index in range(per_thread)]
        got = [result.get(timeout=TIMEOUT) for result in sent]
        with lock:
            ids.extend(result.id for result in sent)
            values.extend(got)

    workers = [threading.Thread(target=publish, args=(offset * 1000,)) for offset in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=TIMEOUT * 2)
    return {"values": sorted(values), "task_ids": ids}


@scenario
def fail_many(count: int) -> dict[str, Any]:
    """``count`` failing tasks, each awaited; their states."""
    states: dict[str, int] = {}
    for _ in range(count // 10):
        for result in [fail.delay() for _ in range(10)]:
            result.get(timeout=TIMEOUT, propagate=False)
            states[result.state] = states.get(result.state, 0) + 1
    return {"states": states}


@scenario
def chatter_pair(count: int) -> dict[str, Any]:
    """Two tasks that print at the same time (each waits until the other has started)."""
    left_flag, right_flag = _flag(), _flag()
    left = chatter.delay("left", count, left_flag, right_flag)
    right = chatter.delay("right", count, right_flag, left_flag)
    overlapped = [left.get(timeout=TIMEOUT), right.get(timeout=TIMEOUT)]
    return {"overlapped": all(overlapped), "task_ids": {"left": left.id, "right": right.id}}


def serve() -> None:
    """Answer requests until stdin closes."""
    with os.fdopen(int(os.environ["BEHAVIOUR_REPLY_FD"]), "w") as replies:
        for line in sys.stdin:
            request = json.loads(line)
            name = request.pop("scenario")
            try:
                reply = {"ok": SCENARIOS[name](**request)}
            except Exception:
                reply = {"failed": traceback.format_exc()}
            replies.write(json.dumps(reply, default=repr) + "\n")
            replies.flush()


if __name__ == "__main__":
    serve()
