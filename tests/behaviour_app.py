"""An ordinary Celery app whose tasks exercise what Celery promises (test_native_behaviour.py).

The same module is a plain app or an installed one (``install(app, audit_celery_tasks=True)``)
according to ``BEHAVIOUR_INSTALL``, so one worker of each runs the very same tasks. Its broker
and result backend come from ``BEHAVIOUR_BROKER_URL`` and ``BEHAVIOUR_BACKEND_URL``; one task
keeps its results in a database backend of its own (``BEHAVIOUR_DB_BACKEND_URL``).
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from celery import Celery, Task
from celery.backends.database import DatabaseBackend
from celery.exceptions import Ignore, Reject, SoftTimeLimitExceeded
from celery.utils.log import get_task_logger

app = Celery(
    "behaviour",
    broker=os.environ["BEHAVIOUR_BROKER_URL"],
    backend=os.environ["BEHAVIOUR_BACKEND_URL"],
)
app.conf.broker_connection_retry_on_startup = True

if os.environ.get("BEHAVIOUR_INSTALL") == "1":
    from celery_taskq.celery import install

    install(app, audit_celery_tasks=True)

logger = get_task_logger(__name__)

db_backend = DatabaseBackend(app=app, url=os.environ["BEHAVIOUR_DB_BACKEND_URL"])


def wait_for_file(path: str, timeout: float = 30.0) -> bool:
    """Whether ``path`` exists within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not Path(path).exists():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


@app.task(name="behaviour.add")  # type: ignore[untyped-decorator]
def add(x: int, y: int) -> int:
    """The sum."""
    return x + y


@app.task(name="behaviour.tsum")  # type: ignore[untyped-decorator]
def tsum(numbers: list[int]) -> int:
    """The sum of a list (a chord's callback, a map's task)."""
    return sum(numbers)


@app.task(name="behaviour.fail")  # type: ignore[untyped-decorator]
def fail() -> None:
    """Always fails."""
    raise KeyError("missing thing")


@app.task(name="behaviour.retry_then_succeed", bind=True, max_retries=3, default_retry_delay=0)  # type: ignore[untyped-decorator]
def retry_then_succeed(self: Task) -> int:
    """Retries twice with ``self.retry()``, then returns its retry count."""
    if self.request.retries < 2:
        raise self.retry(exc=ConnectionError(f"try {self.request.retries + 1}"))
    return int(self.request.retries)


@app.task(name="behaviour.retry_exhausted", bind=True, max_retries=1, default_retry_delay=0)  # type: ignore[untyped-decorator]
def retry_exhausted(self: Task) -> None:
    """Retries until no retry is left."""
    raise self.retry(exc=ValueError("no luck"))


@app.task(  # type: ignore[untyped-decorator]
    name="behaviour.autoretry",
    bind=True,
    autoretry_for=(ConnectionError,),
    max_retries=3,
    default_retry_delay=0,
)
def autoretry(self: Task, failures: int) -> int:
    """Fails ``failures`` times with an error autoretry catches, then returns its retry count."""
    if self.request.retries < failures:
        raise ConnectionError(f"try {self.request.retries + 1}")
    return int(self.request.retries)


@app.task(name="behaviour.sleep_for")  # type: ignore[untyped-decorator]
def sleep_for(seconds: float, started_flag: str = "") -> float:
    """Sleeps; first touches ``started_flag`` if given."""
    if started_flag:
        Path(started_flag).touch()
    time.sleep(seconds)
    return seconds


@app.task(name="behaviour.when_run")  # type: ignore[untyped-decorator]
def when_run() -> float:
    """The wall-clock time it ran at."""
    return time.time()


@app.task(name="behaviour.soft_limit_caught", bind=True, soft_time_limit=0.5)  # type: ignore[untyped-decorator]
def soft_limit_caught(self: Task) -> str:
    """Catches its soft time limit and returns."""
    try:
        time.sleep(10)
    except SoftTimeLimitExceeded:
        return "caught"
    return "not reached"


@app.task(name="behaviour.soft_limit", soft_time_limit=0.5)  # type: ignore[untyped-decorator]
def soft_limit() -> None:
    """Runs into its soft time limit."""
    time.sleep(10)


@app.task(name="behaviour.hard_limit", time_limit=1)  # type: ignore[untyped-decorator]
def hard_limit() -> None:
    """Runs into its hard time limit (its process is killed)."""
    time.sleep(10)


@app.task(name="behaviour.ignore")  # type: ignore[untyped-decorator]
def ignore(flag: str) -> None:
    """Raises ``Ignore`` after touching ``flag``."""
    Path(flag).touch()
    raise Ignore()


@app.task(name="behaviour.reject", acks_late=True)  # type: ignore[untyped-decorator]
def reject(flag: str) -> None:
    """Raises ``Reject`` (not requeued) after touching ``flag``."""
    Path(flag).touch()
    raise Reject("not wanted", requeue=False)


@app.task(name="behaviour.die_once", acks_late=True, reject_on_worker_lost=True)  # type: ignore[untyped-decorator]
def die_once(flag: str) -> str:
    """Kills its own process on the first delivery; the redelivered message returns."""
    if not Path(flag).exists():
        Path(flag).touch()
        os.kill(os.getpid(), signal.SIGKILL)
    return "redelivered"


@app.task(name="behaviour.die", acks_late=True)  # type: ignore[untyped-decorator]
def die() -> None:
    """Kills its own process (``acks_late`` without ``reject_on_worker_lost``)."""
    os.kill(os.getpid(), signal.SIGKILL)


@app.task(name="behaviour.echo")  # type: ignore[untyped-decorator]
def echo(marker: str, flag: str, fail: bool = False) -> bool:
    """Writes ``marker`` to stdout, stderr and its task log, then waits for ``flag``; then
    fails with ``KeyError(marker)`` if asked to."""
    print(f"{marker} on stdout")
    print(f"{marker} on stderr", file=sys.stderr)
    logger.warning("%s in the task log", marker)
    seen = wait_for_file(flag) if flag else True
    if fail:
        raise KeyError(marker)
    return seen


@app.task(name="behaviour.replaced", bind=True)  # type: ignore[untyped-decorator]
def replaced(self: Task) -> None:
    """Replaces itself with ``add(2, 3)``."""
    raise self.replace(add.s(2, 3))


@app.task(name="behaviour.stamps", bind=True)  # type: ignore[untyped-decorator]
def stamps(self: Task) -> dict[str, Any]:
    """The stamps its message carried."""
    carried = self.request.stamps or {}
    return {header: carried.get(header) for header in self.request.stamped_headers or []}


@app.task(name="behaviour.db_add", backend=db_backend)  # type: ignore[untyped-decorator]
def db_add(x: int, y: int) -> int:
    """The sum, kept in the database result backend."""
    return x + y


@app.task(name="behaviour.chatter")  # type: ignore[untyped-decorator]
def chatter(name: str, count: int, started_flag: str, other_flag: str) -> bool:
    """Prints ``count`` lines once the other chatter has started too; whether it had."""
    Path(started_flag).touch()
    overlapped = wait_for_file(other_flag, timeout=10)
    for index in range(count):
        print(f"{name} line {index}")
        time.sleep(0.005)
    return overlapped
