"""The project's Celery app: Redis as broker, a beat schedule, and celery_taskq installed.

The lines marked ``# celery_taskq`` are the adoption; without them this is the app as it was.
Deployments set ``CELERY_BROKER_URL`` and ``DATABASE_URL``; ``MYAPP_STATS_EVERY`` (seconds)
paces the beat entry.
"""

from __future__ import annotations

import os

from celery import Celery

from celery_taskq.celery import install  # celery_taskq

# Celery itself lets CELERY_BROKER_URL override the broker.
app = Celery("myapp", broker="redis://localhost:6379/0", include=["myapp.tasks"])
app.conf.update(
    timezone="UTC",
    beat_schedule={
        "refresh-stats": {
            "task": "myapp.tasks.refresh_stats",
            "schedule": float(os.environ.get("MYAPP_STATS_EVERY", "60")),
        },
    },
    # celery_taskq: the database of its tables (TASKQ_DATABASE_URL would override it)
    taskq_database_url=os.environ.get("DATABASE_URL", "postgresql+psycopg:///myapp"),
)
install(app, audit_celery_tasks=True)  # celery_taskq
