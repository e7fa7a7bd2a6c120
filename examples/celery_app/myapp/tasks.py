"""The project's Celery tasks, unchanged by the adoption: each call and attempt is audited."""

from __future__ import annotations

from celery import Task

from myapp.celery import app


@app.task
def add(x: int, y: int) -> int:
    """Add two numbers."""
    return x + y


@app.task(bind=True, max_retries=3, default_retry_delay=0)
def send_welcome_email(self: Task, user_id: int) -> str:
    """Send a welcome mail; the mail server refuses the first attempt, and Celery retries."""
    if self.request.retries == 0:
        print(f"mail server busy for user {user_id}, retrying")
        raise self.retry(exc=ConnectionError("mail server busy"))
    print(f"welcome mail sent to user {user_id}")
    return f"sent to {user_id}"


@app.task
def refresh_stats() -> dict[str, int]:
    """Run by beat (``refresh-stats`` in the schedule)."""
    return {"users": 42}
