"""A plain Celery app whose one task fails the first time it runs for a marker file and
succeeds after (used by tests/test_resend_e2e.py to re-send a failed task)."""

from __future__ import annotations

import os
from pathlib import Path

from celery import Celery

from celery_taskq.celery import install

app = Celery("resend_app", broker=os.environ["RESEND_BROKER_URL"])
app.conf.broker_connection_retry_on_startup = True
install(app, audit_celery_tasks=True)


@app.task(name="resend.flip", max_retries=0)  # type: ignore[untyped-decorator]
def flip(marker: str, *, greeting: str) -> str:
    """Fails while ``marker`` does not exist (creating it); then returns ``greeting``."""
    path = Path(marker)
    if not path.exists():
        path.write_text("failed once")
        raise RuntimeError("the first attempt fails")
    return greeting
