"""Pool processes share what their worker's main process loaded before it forked them.

A prefork pool process that imports SQLAlchemy, the database driver and celery_taskq's core
after the fork holds its own copy of them (about 25 MB each). Imported once in the worker's
main process before the pool forks (``worker_init``), they are shared by every pool process,
copy-on-write. ``gc.freeze()`` then moves every object the main process holds into the
collector's permanent generation, as Python's documentation advises before a ``fork()``
without ``exec()``: a collection in a pool process no longer writes to those objects' headers,
which would copy the pages that hold them into each process.

What a pool process shares is visible in its proportional and unique memory (PSS, USS), not in
its resident size (RSS), which counts shared pages in full in every process.
"""

from __future__ import annotations

import gc
import importlib
import logging

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

logger = logging.getLogger(__name__)

POOL_MODULES = (
    "celery_taskq.core.queue",
    "celery_taskq.core.overseer",
    "celery_taskq.core.runner.loop",
    "celery_taskq.core.storage.database",
)
"""What a pool process imports to run handler runs and the periodic events."""


def preload_before_fork(database_url: str) -> None:
    """Import :data:`POOL_MODULES` and the driver of ``database_url``, then freeze the heap.

    Opens no connection. A URL that names no installed driver is left to the pool processes,
    which report it where they use it.
    """
    for name in POOL_MODULES:
        importlib.import_module(name)
    try:
        make_url(database_url).get_dialect().import_dbapi()
    except (ArgumentError, NoSuchModuleError, ImportError) as exc:
        logger.debug("database driver not preloaded: %s", exc)
    gc.freeze()
