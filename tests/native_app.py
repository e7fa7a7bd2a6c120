"""A plain Celery app with plain tasks, audited by celery_taskq (used by tests/test_audit.py and
tests/test_native_outcomes.py): one task per way an attempt can end.

Tasks that behave differently on a second delivery leave a marker file in ``NATIVE_DIR`` (the
worker's working directory by default).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

from celery import Celery
from celery.exceptions import Ignore, Reject

from celery_taskq.celery import install

app = Celery(
    "native_app",
    broker=os.environ["NATIVE_BROKER_URL"],
    backend=os.environ.get("NATIVE_RESULT_BACKEND") or None,
)
app.conf.broker_connection_retry_on_startup = True
app.conf.worker_prefetch_multiplier = 1
install(app, audit_celery_tasks=True)


def _first_time(name: str) -> bool:
    """``True`` the first time a task asks for ``name`` (across processes)."""
    marker = Path(os.environ.get("NATIVE_DIR", ".")) / f"{name}.marker"
    try:
        marker.touch(exist_ok=False)
    except FileExistsError:
        return False
    return True


@app.task(name="native.add")  # type: ignore[untyped-decorator]
def add(x: int, y: int) -> int:
    """Adds, and says so."""
    print(f"adding {x} and {y}")
    return x + y


@app.task(name="native.total")  # type: ignore[untyped-decorator]
def total(values: list[int], extra: int = 0) -> int:
    """Sums a chord header's results."""
    return sum(values) + extra


@app.task(name="native.fail")  # type: ignore[untyped-decorator]
def fail() -> None:
    """Always fails."""
    print("about to fail", file=sys.stderr)
    raise KeyError("missing thing")


@app.task(name="native.flaky", bind=True, max_retries=2, default_retry_delay=0)  # type: ignore[untyped-decorator]
def flaky(self: Any) -> str:
    """Retries twice, then succeeds on its third attempt."""
    print(f"attempt {self.request.retries + 1}")
    if self.request.retries < 2:
        raise self.retry(exc=ConnectionError(f"try {self.request.retries + 1} failed"))
    return "third time lucky"


@app.task(name="native.exhausted", bind=True, max_retries=1, default_retry_delay=0)  # type: ignore[untyped-decorator]
def exhausted(self: Any) -> None:
    """Retries until Celery gives up: two attempts, the last one final."""
    raise self.retry(exc=ValueError(f"attempt {self.request.retries}"))


@app.task(  # type: ignore[untyped-decorator]
    name="native.autoretried",
    bind=True,
    autoretry_for=(ValueError,),
    retry_kwargs={"max_retries": 5},
    default_retry_delay=0,
)
def autoretried(self: Any) -> str:
    """Fails twice under autoretry (limit 5), then succeeds."""
    if self.request.retries < 2:
        raise ValueError(f"autoretry {self.request.retries}")
    return "autoretried"


@app.task(name="native.unlimited", bind=True, max_retries=None, default_retry_delay=0)  # type: ignore[untyped-decorator]
def unlimited(self: Any) -> str:
    """Retries without limit; succeeds on its second attempt."""
    if self.request.retries < 1:
        raise self.retry(exc=TimeoutError("once"))
    return "done"


@app.task(name="native.rejected")  # type: ignore[untyped-decorator]
def rejected() -> None:
    """Rejects its message for good."""
    raise Reject("not for us", requeue=False)


@app.task(name="native.requeued", acks_late=True)  # type: ignore[untyped-decorator]
def requeued() -> str:
    """Puts its message back the first time, succeeds the second."""
    if _first_time("requeued"):
        raise Reject("later", requeue=True)
    return "second delivery"


@app.task(name="native.ignored")  # type: ignore[untyped-decorator]
def ignored() -> None:
    """Tells Celery to store no state."""
    raise Ignore()


@app.task(name="native.replaced", bind=True)  # type: ignore[untyped-decorator]
def replaced(self: Any) -> None:
    """Replaces itself with ``native.add`` (which runs under the same task id)."""
    raise self.replace(add.s(20, 22))


@app.task(name="native.soft_limited", soft_time_limit=0.3)  # type: ignore[untyped-decorator]
def soft_limited() -> None:
    """Overruns its soft time limit."""
    time.sleep(5)


@app.task(name="native.hard_limited", time_limit=1)  # type: ignore[untyped-decorator]
def hard_limited() -> None:
    """Overruns its hard time limit; the pool process is killed."""
    time.sleep(30)


@app.task(name="native.quiet", ignore_result=True)  # type: ignore[untyped-decorator]
def quiet() -> int:
    """Succeeds with its result ignored."""
    return 7


@app.task(name="native.sleeper")  # type: ignore[untyped-decorator]
def sleeper(seconds: float) -> None:
    """Sleeps (to be revoked with terminate=True, or killed)."""
    time.sleep(seconds)


def _pid_file(name: str) -> Path:
    return Path(os.environ.get("NATIVE_DIR", ".")) / f"{name}.pid"


@app.task(name="native.doomed")  # type: ignore[untyped-decorator]
def doomed() -> None:
    """Writes its pool process's PID, then sleeps to be killed (no acks_late)."""
    _pid_file("doomed").write_text(str(os.getpid()))
    time.sleep(60)


@app.task(name="native.doomed_late", acks_late=True, reject_on_worker_lost=True)  # type: ignore[untyped-decorator]
def doomed_late() -> str:
    """The first time, writes its PID and sleeps to be killed; redelivered, succeeds."""
    if _first_time("doomed_late"):
        _pid_file("doomed_late").write_text(str(os.getpid()))
        time.sleep(60)
    return "redelivered"


@app.task(name="native.not_audited", taskq_audit=False)  # type: ignore[untyped-decorator]
def not_audited() -> int:
    """Opted out of the audit."""
    return 1
