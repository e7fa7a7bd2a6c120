"""The plain Celery side of the benchmark: no-op tasks on a Redis broker, no result backend.

The worker runs ``celery -A benchmarks.plain_app worker -P prefork -c 2``; the broker URL comes
from ``BENCH_REDIS_URL``. Apart from ignoring results (there is no backend) the app keeps
Celery's defaults; with ``BENCH_PLAIN_FLOWER=1`` its worker sends task events as it does while
Flower watches it (:data:`FLOWER_ATTACHED`). Tasks report to Redis so the
benchmark can tell when and how fast they ran: ``noop`` counts itself and keeps the earliest
and latest time a task ran, ``record_start`` stores when it started.
"""

from __future__ import annotations

import os
import time

import redis
from celery import Celery

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")

DONE_KEY = "bench:done"
"""Counter: no-op tasks that ran."""

TIMES_KEY = "bench:times"
"""Sorted set: member ``first`` scores the earliest start, ``last`` the latest."""

STARTS_KEY = "bench:starts"
"""Hash: index of a ``record_start`` task -> the ``time.time()`` it started at."""

FLOWER_ATTACHED = {"worker_send_task_events": True}
"""A worker while Flower watches it: Flower's ``enable_events`` command (every 5 s, on by
default) turns its task events on. The callers' ``task-sent`` events stay off: Flower cannot
turn those on, and neither Celery nor celery_taskq does by default."""

app = Celery("bench_plain", broker=REDIS_URL)
app.conf.task_ignore_result = True
if os.environ.get("BENCH_PLAIN_FLOWER"):
    app.conf.update(FLOWER_ATTACHED)

_clients: dict[int, redis.Redis] = {}


def client() -> redis.Redis:
    """A Redis client of this process (pool processes are forked: never share one)."""
    pid = os.getpid()
    if pid not in _clients:
        _clients[pid] = redis.Redis.from_url(REDIS_URL)
    return _clients[pid]


def count_run() -> None:
    """Count this run and widen the [first, last] window; one round trip to Redis."""
    now = time.time()
    pipe = client().pipeline(transaction=False)
    pipe.incr(DONE_KEY)
    pipe.zadd(TIMES_KEY, {"first": now}, lt=True)
    pipe.zadd(TIMES_KEY, {"last": now}, gt=True)
    pipe.execute()


def store_start(index: int) -> None:
    """Store the time this task started, for the enqueue -> start latency."""
    client().hset(STARTS_KEY, str(index), repr(time.time()))


noop = app.task(name="bench.noop")(count_run)
record_start = app.task(name="bench.record_start")(store_start)
