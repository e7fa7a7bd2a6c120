"""A thread that does one job when the run in progress outlives a deadline.

The group-commit runner (:mod:`celery_taskq.core.runner.batch`) arms it as each reserved run
starts: a run still working when the window closes is marked ``running`` then, with the outcomes
waiting for their commit. One long-lived thread serves every run (a thread per run would cost
more than a short run).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

logger = logging.getLogger(__name__)

IDLE_WAIT = 0.01
"""Seconds the idle thread sleeps between looks; a job armed for sooner wakes it at once."""


class StartWatch:
    """Runs the armed job once its deadline passes, unless disarmed first.

    The job runs holding the watch's lock: :meth:`disarm` returns only when no job is running,
    and says whether the job ran, so the caller knows the state the job left behind.
    """

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._job: Callable[[], None] | None = None
        self._deadline = 0.0
        self._ran = False
        self._closed = False
        self._sleeping_until = 0.0
        self._thread = threading.Thread(target=self._work, name="taskq-start-watch", daemon=True)
        self._thread.start()

    def arm(self, delay: float, job: Callable[[], None]) -> None:
        """Run ``job`` in ``delay`` seconds unless :meth:`disarm` comes first."""
        with self._condition:
            self._job = job
            self._deadline = time.monotonic() + max(delay, 0.0)
            self._ran = False
            if self._deadline < self._sleeping_until:  # else the thread wakes up in time
                self._condition.notify()

    def run_now(self) -> bool:
        """Run the armed job now, in the calling thread, if it has not run; whether it has."""
        with self._condition:
            if self._job is not None and not self._ran:
                self._run()
            return self._ran

    def disarm(self) -> bool:
        """Cancel the job; whether it ran (successfully) before."""
        with self._condition:
            ran = self._ran
            self._job = None
            self._ran = False
            return ran

    def close(self) -> None:
        """End the thread (a job in progress finishes first)."""
        with self._condition:
            self._closed = True
            self._job = None
            self._condition.notify()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        job = self._job
        if job is None:
            return
        try:
            job()
        except Exception:
            # The run stays as it was (reserved): its outcome is committed the usual way.
            logger.warning("the start of a long run could not be recorded", exc_info=True)
            self._job = None
        else:
            self._ran = True

    def _work(self) -> None:
        with self._condition:
            while not self._closed:
                now = time.monotonic()
                if self._job is None or self._ran:
                    # Idle: look again after a while, so that arming wakes no thread.
                    self._sleeping_until = now + IDLE_WAIT
                    self._condition.wait(IDLE_WAIT)
                    continue
                if self._deadline > now:
                    self._sleeping_until = self._deadline
                    self._condition.wait(self._deadline - now)
                    continue
                self._sleeping_until = 0.0
                self._run()
