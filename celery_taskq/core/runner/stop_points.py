"""Where a time limit's soft stop may land: never inside a database transaction.

The soft stop of :mod:`celery_taskq.core.runner.time_limit` raises an exception into a running
handler between two bytecodes. Raised inside a database driver or SQLAlchemy's connection handling,
it can leave a transaction open on a pooled connection; on SQLite that transaction holds the
database's write lock, and every other process waits on it until the runner dies. So
:class:`celery_taskq.core.storage.database.Database` wraps each transaction in :func:`no_stop`, and
a stop that arrives meanwhile is *deferred*: raised the moment the outermost transaction has ended.

A thread with no time limit in force pays one dictionary lookup per transaction.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from types import TracebackType

StopAction = Callable[[], None]
"""Raises the deferred stop (it never returns normally)."""


class StopPoints:
    """The stop state of one thread while a time limit is in force on it.

    ``lock`` is shared with the time limit's watchdog, which asks :meth:`deliverable` before it
    interrupts the thread, so that a stop is either delivered outside every transaction or
    deferred, never both.
    """

    def __init__(self, lock: threading.Lock) -> None:
        self.lock = lock
        self.depth = 0
        self.deferred: StopAction | None = None
        self.on_enter: StopAction | None = None

    def deliverable(self, stop: StopAction) -> bool:
        """Whether a stop may be delivered now; if not, it is deferred. Call under ``lock``."""
        if self.depth > 0:
            self.deferred = stop
            return False
        return True


_threads: dict[int, StopPoints] = {}


def watch(thread_id: int, points: StopPoints) -> None:
    """Track transactions of ``thread_id`` while a time limit is in force on it."""
    _threads[thread_id] = points


def unwatch(thread_id: int) -> None:
    """Stop tracking ``thread_id``."""
    _threads.pop(thread_id, None)


class _NoStop:
    """Context manager: see :func:`no_stop`."""

    __slots__ = ("_points",)

    def __init__(self) -> None:
        self._points: StopPoints | None = None

    def __enter__(self) -> None:
        points = _threads.get(threading.get_ident())
        if points is None:
            return
        with points.lock:
            pending, points.on_enter = points.on_enter, None
            if pending is None:
                points.depth += 1
                self._points = points
        if pending is not None:
            pending()  # a stop sent just before this transaction: raise it before it begins

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        points = self._points
        if points is None:
            return
        with points.lock:
            points.depth -= 1
            deferred = points.deferred if points.depth == 0 else None
            if deferred is not None:
                points.deferred = None
        if deferred is not None:
            deferred()


def no_stop() -> _NoStop:
    """A section (a database transaction) that a soft stop must not interrupt."""
    return _NoStop()
