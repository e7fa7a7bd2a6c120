"""The runner's heartbeat: a thread keeping its row's ``HeartbeatOn`` fresh, renewing its lease."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from celery_taskq.core.clock import Clock, utc_now
from celery_taskq.core.runner.lease import Lease
from celery_taskq.core.statements import runners
from celery_taskq.core.storage.database import Database

logger = logging.getLogger(__name__)


class Heartbeat:
    """A daemon thread refreshing a runner row's ``HeartbeatOn`` every ``interval`` seconds.

    Each stored heartbeat renews ``lease`` (see :mod:`celery_taskq.core.runner.lease`). ``on_lost``
    is called once if the row is no longer ``running`` (the overseer timed it out); a run the runner
    still holds then must not go on, so the lease ends the process first.
    """

    def __init__(
        self,
        database: Database,
        runner_id: int,
        interval: float,
        *,
        clock: Clock = utc_now,
        on_lost: Callable[[], None] = lambda: None,
        lease: Lease | None = None,
    ) -> None:
        self.database = database
        self.runner_id = runner_id
        self.interval = interval
        self.clock = clock
        self.on_lost = on_lost
        self.lease = lease
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True, name="taskq-heartbeat")

    def start(self) -> None:
        """Start beating."""
        self._thread.start()

    def stop(self) -> None:
        """Stop beating and wait briefly for the thread."""
        self._stopped.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _beat(self) -> None:
        while not self._stopped.wait(self.interval):
            sent_at = Lease.renewing()
            try:
                with self.database.transaction() as connection:
                    alive = runners.beat_heart(connection, self.runner_id, self.clock())
            except Exception:
                logger.exception(
                    "heartbeat of runner %s failed",
                    self.runner_id,
                    extra={"action": "heartbeat_failed", "runner_id": self.runner_id},
                )
                continue
            if alive:
                if self.lease is not None:
                    self.lease.renewed(sent_at)
                continue
            logger.warning(
                "runner %s was timed out by the overseer",
                self.runner_id,
                extra={"action": "runner_timed_out", "runner_id": self.runner_id},
            )
            if self.lease is not None:
                self.lease.lost()
            self.on_lost()
            return
