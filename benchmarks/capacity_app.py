"""The Celery app of benchmarks/bench_capacity.py: the app's own tasks, with or without
celery_taskq installed.

``BENCH_REDIS_URL`` is the broker, and where ``bench.work`` records when and in which process
it ran. With ``BENCH_INSTALL=1`` the app has ``install(app, audit_celery_tasks=True)``, its
settings from the ``TASKQ_*`` environment; otherwise it is plain Celery with its defaults.

``bench.execute_run`` is the other way to dispatch handler runs that the benchmark measures:
one Celery message per run, which registers a runner, claims one scheduled run, runs it and
leaves (the lease, the heartbeat and the kernel timer included, as a runner task has them).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import redis
from celery import Celery

from celery_taskq.celery import TaskqCelery, install

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
INSTALLED = os.environ.get("BENCH_INSTALL") == "1"

RUNS_KEY = "capacity:runs"
"""List of JSON records, one per ``bench.work`` execution: index, pid, sent, start, end."""

app = Celery("bench_capacity", broker=REDIS_URL)
app.conf.task_ignore_result = True
app.conf.broker_connection_retry_on_startup = True
state: TaskqCelery | None = install(app, audit_celery_tasks=True) if INSTALLED else None

_clients: dict[int, redis.Redis] = {}


def client() -> redis.Redis:
    """A Redis client of this process (pool processes are forked: never share one)."""
    pid = os.getpid()
    if pid not in _clients:
        _clients[pid] = redis.Redis.from_url(REDIS_URL)
    return _clients[pid]


@app.task(name="bench.work")  # type: ignore[untyped-decorator]
def work(index: int, seconds: float, sent: float) -> None:
    """The app's own task: works ``seconds`` (sleeping), then records itself."""
    start = time.time()
    time.sleep(seconds)
    record = {"index": index, "pid": os.getpid(), "sent": sent, "start": start, "end": time.time()}
    client().rpush(RUNS_KEY, json.dumps(record))


@app.task(name="bench.execute_run", bind=True)  # type: ignore[untyped-decorator]
def execute_run(self: Any) -> int:
    """Per-run dispatch: a runner for one run, in whichever pool process the message reaches."""
    if state is None:
        raise RuntimeError("bench.execute_run needs BENCH_INSTALL=1")
    runner = state.service.get_task_runner(worker_hostname=self.request.hostname)
    if runner is None:
        return 0
    runner.run(max_runs=1, max_idle=0, should_stop=state.stop_requested)
    return runner.runs_done
