"""Every table of the schema: importing this module puts them all on ``Base.metadata``.

The tables of the operations features live in modules of their own (``schedule_models.py``,
``retention_models.py``) that import :mod:`celery_taskq.core.models` for its ``Base``; so
``models.py`` cannot import them back. What needs the whole schema (the migrations, the
schema check) takes ``Base`` from here.
"""

from __future__ import annotations

from celery_taskq.core import retention_models, schedule_models
from celery_taskq.core.models import Base

__all__ = ["Base", "retention_models", "schedule_models"]
