"""A plain Celery app with plain tasks, audited by celery_taskq (used by tests/test_audit.py)."""

from __future__ import annotations

import os
import sys
from typing import Any

from celery import Celery

from celery_taskq.celery import install

app = Celery(
    "native_app",
    broker=os.environ["NATIVE_BROKER_URL"],
    backend=os.environ.get("NATIVE_RESULT_BACKEND") or None,
)
app.conf.broker_connection_retry_on_startup = True
install(app, audit_celery_tasks=True)


@app.task(name="native.add")  # type: ignore[untyped-decorator]
def add(x: int, y: int) -> int:
    """Adds, and says so."""
    print(f"adding {x} and {y}")
    return x + y


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
