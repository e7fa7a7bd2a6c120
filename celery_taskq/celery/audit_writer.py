"""Where the native audit's writes go: :class:`AuditWriter`, one per process, in order.

The auditor hands it operations (a callable taking a connection), in the order they happen in
this process. With ``audit_write_behind`` (the default) :meth:`AuditWriter.submit` only appends
the operation to an in-memory queue and returns: one writer thread per process runs
consecutive operations in one transaction (up to ``audit_batch_size``, gathered for at most
``audit_batch_window`` seconds after the first), in submission order. Without it, each
operation commits before ``submit`` returns.

- **Writes of one kind** (:class:`GroupedOp` of one group, e.g. the rows of publishes) that
  follow each other in a batch run as one call of their ``run_group`` (one statement or one
  ``executemany``): the cheapest write there is.
- **Merged writes**: a :class:`MergingOp` whose earlier operation (``merges``) is in the same
  batch stands in for both (``merged()``, run at the later one's place): an attempt that
  started and ended within one batch window is written once, finished.
- **One bad operation costs only itself.** A batch that fails is rolled back and run again
  one operation per transaction; an operation may therefore run twice (its first run rolled
  back), and must set again whatever it leaves for later operations. A failure is logged
  (``audit_failed``) and counted in :attr:`AuditWriter.failures`, never raised into the task.
- **A database outage** (a failure after which ``SELECT 1`` fails too) keeps the operations
  queued, in order, and the thread retries with backoff (``audit_write_waiting``, then
  ``audit_write_resumed``). The queue is bounded (``queue_limit``): a caller that finds it full
  writes the backlog and its own operation itself, in order, rather than dropping anything;
  only while the database is unreachable is that caller's operation dropped (logged and
  counted), so the task never waits on an outage and memory stays bounded.
- **A crash** (SIGKILL) loses what was still queued: one window's operations and the batch
  being committed while the thread keeps up, at most :data:`QUEUE_LIMIT` when it does not.
  What was committed is always a prefix of what was submitted, in order, each batch whole or
  not at all.
- **Fork-safe**: a child forked from a process with a writer thread starts its own (the
  parent's queued operations are the parent's to write). :meth:`AuditWriter.flush` waits for
  everything submitted so far; :meth:`AuditWriter.close` flushes and stops; every writer of the
  process is closed at interpreter exit (``atexit``) with :data:`EXIT_FLUSH_TIMEOUT`.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
import weakref
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Sequence
from typing import NamedTuple

from sqlalchemy import Connection

from celery_taskq.core.settings import (
    DEFAULT_AUDIT_BATCH_SIZE,
    DEFAULT_AUDIT_BATCH_WINDOW,
    DEFAULT_AUDIT_WRITE_BEHIND,
    Settings,
)
from celery_taskq.core.storage.database import Database

logger = logging.getLogger(__name__)

AuditOp = Callable[[Connection], None]
"""One audit write: statements to run in a transaction, in submission order."""

QUEUE_LIMIT = 1_000
"""Operations a process may hold in memory before callers write the backlog themselves: it
bounds what a crash can lose, and the wait of a flush at shutdown, when writes come faster than
the database takes them (a few seconds of writes at the audit's cost per write)."""

EXIT_FLUSH_TIMEOUT = 5.0
"""Seconds a process waits at exit for its queued audit writes (all its writers together)."""

RETRY_FIRST = 0.05
"""Seconds before the first retry while the database is unreachable; each retry doubles it."""

RETRY_MAX = 5.0
"""The longest wait between retries while the database is unreachable."""


class GroupedOp(ABC):
    """An audit write that runs together with the consecutive writes of its group in a batch
    (one ``executemany``-like call), and alone when it is retried by itself."""

    @property
    @abstractmethod
    def group(self) -> object:
        """Consecutive operations with the same group run as one :meth:`run_group` call."""

    @abstractmethod
    def run_group(self, connection: Connection, ops: Sequence[GroupedOp]) -> None:
        """Run ``ops`` (this one first, all of its group) in order."""

    def __call__(self, connection: Connection) -> None:
        """Run this operation alone."""
        self.run_group(connection, [self])


class MergingOp(ABC):
    """An audit write that can stand in for an earlier one of the same batch."""

    @property
    @abstractmethod
    def merges(self) -> object:
        """The operation (the same object as submitted) this one can stand in for."""

    @abstractmethod
    def merged(self) -> AuditOp | GroupedOp:
        """What writes both: run in place of this operation, the earlier one being skipped."""

    @abstractmethod
    def __call__(self, connection: Connection) -> None:
        """Run this operation alone (the earlier one was written before)."""


def _skipped(connection: Connection) -> None:
    """An operation merged into a later one of its batch: nothing left to write."""


Op = AuditOp | GroupedOp | MergingOp


class _Pending(NamedTuple):
    op: Op
    describe: str


class AuditWriter:
    """Runs audit operations against the database, in the order they were submitted.

    ``get_settings`` gives ``audit_write_behind``, ``audit_batch_size`` and
    ``audit_batch_window`` (read at each use; ``None``: their defaults).
    """

    def __init__(
        self,
        get_database: Callable[[], Database],
        get_settings: Callable[[], Settings] | None = None,
        *,
        queue_limit: int = QUEUE_LIMIT,
    ) -> None:
        self.get_database = get_database
        self.get_settings = get_settings
        self.queue_limit = queue_limit
        self._reset()
        _writers.add(self)

    def _reset(self) -> None:
        # Also the state of a forked child: fresh locks (the parent's may have been held by
        # its writer thread at the fork), no thread, and none of the parent's queued writes;
        # a closed writer stays closed (it writes each operation at once).
        closed = getattr(self, "_closed", False)
        self.failures = 0
        """Operations that could not be written (logged), in this process."""
        self.written = 0
        """Operations committed, in this process."""
        self.transactions = 0
        """Transactions that committed operations, in this process (``written /
        transactions`` is the mean batch)."""
        self.write_seconds = 0.0
        """CPU seconds the writing threads spent writing, in this process."""
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._has_work = threading.Condition(self._lock)
        self._progress = threading.Condition(self._lock)
        self._write_lock = threading.Lock()  # held while writing: one writer at a time, in order
        self._queue: deque[_Pending] = deque()
        self._submitted = 0
        self._done = 0
        self._flushers = 0
        self._thread: threading.Thread | None = None
        self._stopping = closed
        self._closed = closed
        self._unreachable = False

    # -- the caller's side -------------------------------------------------------------------

    def submit(self, op: Op, *, describe: str = "") -> None:
        """Hand ``op`` to be written; a failure is logged and counted, never raised.

        Write-behind: returns at once (unless the queue is full, see the module docstring).
        Otherwise, and after :meth:`close`: returns once ``op`` is committed or has failed.
        """
        if self._pid != os.getpid():
            self._reset()
        pending = _Pending(op, describe)
        if self._write_behind() and not self._closed:
            with self._lock:
                if len(self._queue) < self.queue_limit:
                    self._queue.append(pending)
                    self._submitted += 1
                    if self._thread is None:
                        self._start_thread()
                    elif len(self._queue) == 1 or len(self._queue) >= self._batch_size():
                        self._has_work.notify()
                    return
                if self._unreachable:
                    self._submitted += 1
                    self._done += 1
                    self._drop([pending], "the queue is full and the database is unreachable")
                    return
        self._write_in_caller(pending)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every operation submitted so far is written (or has failed); ``True``
        when none is left, ``False`` when ``timeout`` seconds passed first."""
        if self._pid != os.getpid():
            self._reset()
        with self._lock:
            target = self._submitted
            if self._done >= target:
                return True
            if self._thread is None and not self._stopping:
                self._start_thread()
            self._flushers += 1
            self._has_work.notify()
            try:
                return self._progress.wait_for(lambda: self._done >= target, timeout)
            finally:
                self._flushers -= 1

    def close(self, timeout: float | None = None) -> bool:
        """Flush (up to ``timeout`` seconds) and stop the writer thread; later submissions are
        written at once. ``True`` when nothing was left unwritten."""
        if self._pid != os.getpid():
            self._reset()
        flushed = self.flush(timeout)
        with self._lock:
            self._closed = self._stopping = True
            thread = self._thread
            self._has_work.notify_all()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        return flushed

    def _write_in_caller(self, pending: _Pending) -> None:
        with self._write_lock:
            with self._lock:
                batch = [*self._queue, pending]
                self._queue.clear()
                self._submitted += 1
            left = self._write(batch)
            with self._lock:
                if left:  # unreachable: the backlog stays queued, this operation is dropped
                    self._queue.extendleft(reversed(left[:-1]))
                    self._drop(left[-1:], "the database is unreachable")
                self._done += len(batch) - len(left) + (1 if left else 0)
                self._progress.notify_all()

    # -- the writer thread -------------------------------------------------------------------

    def _start_thread(self) -> None:
        self._stopping = False
        self._thread = threading.Thread(
            target=self._run, name="celery_taskq-audit-writer", daemon=True
        )
        self._thread.start()

    def _run(self) -> None:
        backoff = 0.0
        try:
            while True:
                if not self._gather():
                    return
                with self._write_lock:
                    with self._lock:
                        size = min(self._batch_size(), len(self._queue))
                        batch = [self._queue.popleft() for _ in range(size)]
                    left = self._write(batch) if batch else []
                    with self._lock:
                        if left and self._stopping:
                            self._drop(
                                [*left, *self._queue], "stopped while the database is unreachable"
                            )
                            self._done += len(self._queue)
                            self._queue.clear()
                            left = []
                        self._queue.extendleft(reversed(left))
                        self._done += len(batch) - len(left)
                        self._progress.notify_all()
                if left:
                    backoff = min(backoff * 2 or RETRY_FIRST, RETRY_MAX)
                    with self._lock:
                        self._has_work.wait_for(lambda: self._stopping, backoff)
                else:
                    backoff = 0.0
        except Exception:  # a bug here must not leave callers' flushes waiting forever
            logger.exception("the audit writer thread failed", extra={"action": "audit_failed"})
            with self._lock:
                self._thread = None
                self._progress.notify_all()

    def _gather(self) -> bool:
        """Wait for work, then for a batch to fill (or the window to pass); ``False``: stop."""
        with self._lock:
            while not self._queue:
                if self._stopping:
                    self._thread = None
                    return False
                self._has_work.wait()
            deadline = time.monotonic() + self._batch_window()
            while len(self._queue) < self._batch_size() and not (self._stopping or self._flushers):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._has_work.wait(remaining)
            return True

    # -- writing -----------------------------------------------------------------------------

    def _write(self, batch: list[_Pending]) -> list[_Pending]:
        """Write ``batch`` in one transaction, else one operation per transaction; returns the
        operations left unwritten because the database is unreachable (a suffix of ``batch``)."""
        started = time.thread_time()
        try:
            return self._write_batch(batch)
        finally:
            self.write_seconds += time.thread_time() - started

    def _write_batch(self, batch: list[_Pending]) -> list[_Pending]:
        _merge(batch)  # in place: a part left unwritten is queued again as merged
        try:
            with self.get_database().transaction() as connection:
                _run_grouped(connection, batch)
        except Exception:
            if not self._reachable():
                return self._waiting(batch)
            if len(batch) == 1:
                self._failed(batch[0])
                return []
        else:
            self.written += len(batch)
            self.transactions += 1
            self._resumed()
            return []
        for index, pending in enumerate(batch):
            if pending.op is _skipped:
                continue
            try:
                with self.get_database().transaction() as connection:
                    pending.op(connection)
            except Exception:
                if not self._reachable():
                    return self._waiting(batch[index:])
                self._failed(pending)
            else:
                self.written += 1
                self.transactions += 1
        return []

    def _failed(self, pending: _Pending) -> None:
        """Log and count the exception being handled (the database answers: the operation is
        at fault, and retrying it would fail again)."""
        self._resumed()
        with self._lock:
            self.failures += 1
        logger.exception(
            "audit write %s failed", pending.describe, extra={"action": "audit_failed"}
        )

    def _reachable(self) -> bool:
        try:
            with self.get_database().transaction(read_only=True) as connection:
                connection.exec_driver_sql("SELECT 1")
        except Exception:
            return False
        return True

    def _waiting(self, left: list[_Pending]) -> list[_Pending]:
        if not self._unreachable:
            self._unreachable = True
            logger.warning(
                "audit writes wait: the database is unreachable (%d queued)",
                len(left) + len(self._queue),
                extra={"action": "audit_write_waiting"},
            )
        return left

    def _resumed(self) -> None:
        if self._unreachable:
            self._unreachable = False
            logger.warning("audit writes resumed", extra={"action": "audit_write_resumed"})

    def _drop(self, dropped: list[_Pending], why: str) -> None:
        """Count and log operations given up (the caller holds ``_lock``)."""
        self.failures += len(dropped)
        for pending in dropped:
            logger.error(
                "audit write %s dropped: %s",
                pending.describe,
                why,
                extra={"action": "audit_failed"},
            )

    # -- settings ----------------------------------------------------------------------------

    def _write_behind(self) -> bool:
        if self.get_settings is None:
            return DEFAULT_AUDIT_WRITE_BEHIND
        return self.get_settings().audit_write_behind

    def _batch_size(self) -> int:
        if self.get_settings is None:
            return DEFAULT_AUDIT_BATCH_SIZE
        return self.get_settings().audit_batch_size

    def _batch_window(self) -> float:
        if self.get_settings is None:
            return DEFAULT_AUDIT_BATCH_WINDOW
        return self.get_settings().audit_batch_window


def _merge(batch: list[_Pending]) -> None:
    """Replace each :class:`MergingOp` whose earlier operation is in ``batch`` by what writes
    both, and that earlier operation by :func:`_skipped`."""
    places: dict[int, int] | None = None
    for index, pending in enumerate(batch):
        op = pending.op
        if not isinstance(op, MergingOp):
            continue
        if places is None:
            places = {id(earlier.op): place for place, earlier in enumerate(batch)}
        earlier = places.get(id(op.merges))
        if earlier is not None and earlier < index:
            batch[earlier] = batch[earlier]._replace(op=_skipped)
            batch[index] = pending._replace(op=op.merged())


def _run_grouped(connection: Connection, batch: list[_Pending]) -> None:
    """Run ``batch`` in order, each run of consecutive :class:`GroupedOp` of one group as one
    ``run_group`` call."""
    grouped: list[GroupedOp] = []
    for pending in batch:
        op = pending.op
        if op is _skipped:
            continue
        if grouped and not (isinstance(op, GroupedOp) and op.group is grouped[0].group):
            grouped[0].run_group(connection, grouped)
            grouped = []
        if isinstance(op, GroupedOp):
            grouped.append(op)
        else:
            op(connection)
    if grouped:
        grouped[0].run_group(connection, grouped)


_writers: weakref.WeakSet[AuditWriter] = weakref.WeakSet()


def _reset_in_child() -> None:
    for writer in list(_writers):
        writer._reset()


def _close_at_exit() -> None:
    deadline = time.monotonic() + EXIT_FLUSH_TIMEOUT  # for all the writers together
    for writer in list(_writers):
        if writer._pid == os.getpid():
            writer.close(max(deadline - time.monotonic(), 0.0))


os.register_at_fork(after_in_child=_reset_in_child)
atexit.register(_close_at_exit)
