"""An ordinary Celery project, adopting celery_taskq (see docs/adopting-celery.md)."""

from myapp.celery import app

__all__ = ["app"]
