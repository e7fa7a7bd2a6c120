"""Change notices for runs over Redis pub/sub, so that watchers learn of progress at once.

The tables stay the truth: a notice only says "run N changed, read it again", and a watcher
that misses one (or has no Redis) still reads the table every ``fallback`` seconds. Notices go
over Redis where the ``pubsub_url`` setting names it — by default the broker URL when the broker
is Redis — and nowhere otherwise.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING, Protocol

from celery_taskq.core.settings import Settings

if TYPE_CHECKING:
    import redis

logger = logging.getLogger(__name__)

CHANNEL_PREFIX = "taskq:run:"
"""A run's notices go to the channel ``taskq:run:<run id>``."""

WORK_CHANNEL = "taskq:work"
"""Notices that a run became due: idle runners wake up and claim instead of sleeping on."""

REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
"""URL schemes that name a Redis server."""

NOTICE_BATCH_INTERVAL = 0.01
"""Seconds between two batches of notices from one process while notices keep coming."""


def _redis_errors() -> type[Exception]:
    import redis

    return redis.RedisError


class RunListener(Protocol):
    """What a watcher waits on."""

    def wait(self, timeout: float) -> bool:
        """Block up to ``timeout`` seconds; ``True`` if a notice arrived."""


class RunNotifier(Protocol):
    """Publishes and listens for run-changed notices."""

    def publish(self, run_id: int) -> None:
        """Announce that run ``run_id`` changed (never raises)."""

    def listen(self, run_id: int) -> AbstractContextManager[RunListener]:
        """A context manager yielding a :class:`RunListener` for run ``run_id``."""

    def announce_work(self) -> None:
        """Tell idle runners that a run is due (never raises)."""

    def listen_for_work(self) -> AbstractContextManager[RunListener | None]:
        """A listener for :meth:`announce_work` notices, or ``None`` without pub/sub."""


class _Sleeper:
    def wait(self, timeout: float) -> bool:
        time.sleep(timeout)
        return False


class NoNotifier:
    """No pub/sub: publishing does nothing, listening just waits."""

    def publish(self, run_id: int) -> None:
        """Do nothing."""

    @contextmanager
    def listen(self, run_id: int) -> Iterator[RunListener]:
        """Yield a listener that sleeps out its timeout."""
        yield _Sleeper()

    def announce_work(self) -> None:
        """Do nothing."""

    @contextmanager
    def listen_for_work(self) -> Iterator[RunListener | None]:
        """Yield ``None``: runners poll the table."""
        yield None


class _RedisListener:
    def __init__(self, pubsub: redis.client.PubSub) -> None:
        self._pubsub = pubsub

    def wait(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            message = self._pubsub.get_message(ignore_subscribe_messages=True, timeout=left)
            if message is not None:
                while self._pubsub.get_message(ignore_subscribe_messages=True, timeout=0):
                    pass  # several notices in a row need one read of the table
                return True


class RedisNotifier:
    """Notices over Redis pub/sub. Publishing failures are logged, never raised: a run's
    outcome matters more than a watcher's promptness."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._client: redis.Redis | None = None
        self._pending: dict[str, None] = {}
        self._pending_lock = threading.Lock()
        self._wake = threading.Event()
        self._publisher_pid: int | None = None

    @property
    def client(self) -> redis.Redis:
        """The Redis client, connected on first use."""
        if self._client is None:
            import redis  # here, not at the top: processes without Redis never load it

            self._client = redis.Redis.from_url(
                self.url, socket_timeout=2.0, socket_connect_timeout=2.0
            )
        return self._client

    def publish(self, run_id: int) -> None:
        """Announce a change of ``run_id`` (sent in the background; see :meth:`_send`)."""
        self._send(f"{CHANNEL_PREFIX}{run_id}")

    def _send(self, channel: str) -> None:
        # A publish is a Redis round trip; a runner or enqueue() waiting for it would pay it on
        # every run. A background thread sends the notices instead, several per round trip,
        # and a notice asked for while one is pending on the same channel merges with it (a
        # notice only says "read again"). Every notice asked for is sent after it was asked
        # for, so no wake-up is lost; a failure is logged and ignored (readers poll anyway).
        if self._publisher_pid != os.getpid():  # first use, or a forked child: whose copy of
            # the lock may have been held by the parent's publisher thread at the fork
            self._pending_lock = threading.Lock()
            self._wake = threading.Event()
            self._pending = {}
            self._publisher_pid = os.getpid()
            threading.Thread(
                target=self._publish_pending, daemon=True, name="taskq-notices"
            ).start()
        with self._pending_lock:
            self._pending[channel] = None
        self._wake.set()

    def _publish_pending(self) -> None:
        sent_at = float("-inf")
        while True:
            self._wake.wait()
            # A busy runner asks for a notice per run: one batch per NOTICE_BATCH_INTERVAL at
            # most, so the notices of a burst share a round trip (and the runner's process is
            # not woken per run). After a quiet spell the first notice goes out at once.
            pause = sent_at + NOTICE_BATCH_INTERVAL - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            with self._pending_lock:
                self._wake.clear()
                channels, self._pending = list(self._pending), {}
            try:
                pipe = self.client.pipeline(transaction=False)
                for channel in channels:
                    pipe.publish(channel, b"1")
                pipe.execute()
            except _redis_errors() as exc:
                logger.warning(
                    "could not publish %s notices: %s",
                    len(channels),
                    exc,
                    extra={"action": "notify_failed"},
                )
            sent_at = time.monotonic()

    @contextmanager
    def listen(self, run_id: int) -> Iterator[RunListener]:
        """Subscribe to ``run_id``'s notices; without Redis, fall back to sleeping."""
        try:
            pubsub = self.client.pubsub()  # type: ignore[no-untyped-call]
            pubsub.subscribe(f"{CHANNEL_PREFIX}{run_id}")
        except _redis_errors() as exc:
            logger.warning("watching run %s without pub/sub: %s", run_id, exc)
            yield _Sleeper()
            return
        try:
            yield _RedisListener(pubsub)
        finally:
            pubsub.close()

    def announce_work(self) -> None:
        """Wake idle runners (sent in the background like :meth:`publish`)."""
        self._send(WORK_CHANNEL)

    @contextmanager
    def listen_for_work(self) -> Iterator[RunListener | None]:
        """Subscribe to work notices; ``None`` when Redis cannot be reached."""
        try:
            pubsub = self.client.pubsub()  # type: ignore[no-untyped-call]
            pubsub.subscribe(WORK_CHANNEL)
        except _redis_errors() as exc:
            logger.warning("runner polls without work notices: %s", exc)
            yield None
            return
        try:
            yield _RedisListener(pubsub)
        finally:
            pubsub.close()

    def close(self) -> None:
        """Close the connection pool."""
        if self._client is not None:
            self._client.close()
            self._client = None


def notifier_for(settings: Settings) -> RunNotifier:
    """The notifier the settings ask for: Redis when ``pubsub_url`` (or, by default, the
    broker URL) names a Redis server; none when ``pubsub_url`` is ``"none"``."""
    url = settings.pubsub_url or settings.broker_url
    if url == "none" or not url.startswith(REDIS_SCHEMES):
        return NoNotifier()
    return RedisNotifier(url)
