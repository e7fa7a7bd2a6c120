"""Settings, resolved once into a frozen :class:`Settings`.

Order: ``TASKQ_*`` environment variables, then explicit overrides given by a driver (the
Celery layer passes Celery config here), then the documented defaults below.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, fields
from dataclasses import field as dataclass_field
from typing import Any

from celery_taskq.core.exceptions import ConfigurationError
from celery_taskq.core.queues import LimitSpec, parse_limits
from celery_taskq.core.retention import MAX_BATCH_SIZE, RetentionPolicy

DEFAULT_DATABASE_URL = "sqlite:///celery_taskq.db"
"""A SQLite file in the working directory: the embedded default."""

DEFAULT_TASK_RUNNER_LIMIT = 8
"""``TaskRunnerLimit``: most runners that may be ``running`` at once, across all hosts."""

DEFAULT_MAX_RETRIES = 5
"""A task whose failed runs reach this number is not retried."""

DEFAULT_RUNNER_MEMORY_LIMIT_MB = 100
"""A runner whose resident memory exceeds this many MiB leaves after its current run."""

DEFAULT_OUTPUT_CAP_BYTES = 1024 * 1024
"""Most bytes kept of each of a run's stdout and stderr; the rest is cut and marked."""

DEFAULT_TASK_DATA_MAX_BYTES = 1024 * 1024
"""Largest task data (as compact UTF-8 JSON) any intake accepts; larger data is refused."""

DEFAULT_POLL_INTERVAL = 0.1
"""Seconds an idle runner sleeps between claims (a Redis work notice wakes it sooner).

An idle claim finds nothing through a partial index, so polling this often costs little; it
sets the enqueue-to-start latency where there is no Redis for work notices."""

DEFAULT_HEARTBEAT_INTERVAL = 10.0
"""Seconds between a runner's heartbeats."""

DEFAULT_HEARTBEAT_TIMEOUT = 60.0
"""A runner whose heartbeat is older than this many seconds is judged dead."""

DEFAULT_LEASE_MARGIN = 10.0
"""Seconds past a runner's lease (``heartbeat_timeout``) before a runner whose death cannot be
proved (another host or PID namespace) loses its runs; must exceed the clock difference
between hosts."""

DEFAULT_RESULT_MAX_BYTES = 1024 * 1024
"""Largest result (as JSON) a run may store; a larger one ends the run ``error``."""

DEFAULT_RETRY_BACKOFF_BASE = 2.0
"""Seconds before the retry after a first failure; each further failure doubles it (0: none)."""

DEFAULT_RETRY_BACKOFF_MAX = 600.0
"""The longest retry delay, in seconds."""

DEFAULT_RETRY_JITTER = 0.1
"""Retry delays vary randomly by up to this fraction either way."""

DEFAULT_BROKER_URL = "sqla+sqlite:///celery_taskq-broker.db"
"""Celery broker when none is configured: kombu's SQLAlchemy transport on a SQLite file."""

DEFAULT_PROCESS_INTERVAL = 2.0
"""Seconds between beat's OnProcess ticks."""

DEFAULT_CREATE_RUNNERS_INTERVAL = 5.0
"""Seconds between beat's OnCreateTaskRunners ticks."""

DEFAULT_RUNNER_MAX_IDLE = 1.0
"""A runner started as a Celery task leaves after this many seconds without work (0: as soon
as it finds the queue empty), handing its pool process back to the app's tasks."""

DEFAULT_RUNNER_MAX_LIFETIME = 600.0
"""A runner started as a Celery task leaves after this many seconds (after its current run)."""

DEFAULT_GROUP_COMMIT_MS = 0
"""Milliseconds a runner may keep finished runs' outcomes to commit them together (0: the
strict mode, one commit per run before the next starts); PostgreSQL, runners without limits."""

DEFAULT_CLAIM_BATCH_MAX = 50
"""The most runs a runner in the group-commit mode reserves in one claim."""

DEFAULT_RUN_TIME_BUDGET = 60.0
"""Seconds a run may work before its ``run.deadline``; a resumable handler stops there."""

DEFAULT_RUN_TIME_LIMIT = 0.0
"""Seconds a run may work before its handler is stopped and the run ends ``timeout`` (0: none)."""

DEFAULT_RUN_TIME_LIMIT_GRACE = 10.0
"""Seconds a stopped handler has to return before its runner process is ended."""

DEFAULT_NATIVE_LOST_AFTER = 3600.0
"""Seconds after its due time a native task that never started counts as possibly lost."""

DEFAULT_DASHBOARD_REFRESH_INTERVAL = 5.0
"""Seconds between the dashboard's in-place updates of a page's data (0: no live updates)."""

DEFAULT_AUDIT_WRITE_BEHIND = True
"""Whether the native audit's writes leave the task at once and are written by a background
thread in batches (``False``: each write commits before the task goes on)."""

DEFAULT_AUDIT_BATCH_SIZE = 200
"""Most audit writes one background transaction holds."""

DEFAULT_AUDIT_BATCH_WINDOW = 0.05
"""Seconds the background writer gathers audit writes after the first before it commits them
(it commits sooner when ``audit_batch_size`` are waiting). 50 ms: a short task's start and end
fall in one batch and are written once, and a batch holds about 50 writes at a busy pool's
rate (at 20 ms, about 20: the audited drain ran at 0.71-0.78x plain Celery, against 0.84x)."""

DEFAULT_RETENTION_BATCH_SIZE = 2000
"""Most rows one pruning statement deletes (OnProcess and ``celery-taskq prune``); at most
:data:`~celery_taskq.core.retention.MAX_BATCH_SIZE`. OnProcess prunes one batch of each kind a
tick, so this also bounds a tick's pruning: about 1,000 rows/s at the default interval, while
the runners keep their drain rate (benchmarks/RESULTS.md, ``bench_prune.py``)."""

DEFAULT_REDACT_PATTERNS = (
    "password",
    "passwd",
    "secret",
    "token",
    "api_key",
    "apikey",
    "authorization",
    "credential",
    "private_key",
)
"""TaskData keys containing one of these (case-insensitively) are shown as ``[redacted]``."""


@dataclass(frozen=True)
class Settings:
    """Every setting celery_taskq reads, each with its environment variable in ``env_names``."""

    database_url: str = DEFAULT_DATABASE_URL
    task_runner_limit: int = DEFAULT_TASK_RUNNER_LIMIT
    runner_memory_limit_mb: int = DEFAULT_RUNNER_MEMORY_LIMIT_MB
    output_cap_bytes: int = DEFAULT_OUTPUT_CAP_BYTES
    task_data_max_bytes: int = DEFAULT_TASK_DATA_MAX_BYTES
    poll_interval: float = DEFAULT_POLL_INTERVAL
    heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL
    heartbeat_timeout: float = DEFAULT_HEARTBEAT_TIMEOUT
    """A runner's lease: its runs are fenced this long after its last stored heartbeat."""
    lease_margin: float = DEFAULT_LEASE_MARGIN
    result_max_bytes: int = DEFAULT_RESULT_MAX_BYTES
    allowed_handler_prefixes: tuple[str, ...] = ()
    imports: tuple[str, ...] = ()
    hostname: str = ""
    broker_url: str = DEFAULT_BROKER_URL
    process_interval: float = DEFAULT_PROCESS_INTERVAL
    create_runners_interval: float = DEFAULT_CREATE_RUNNERS_INTERVAL
    runner_max_idle: float = DEFAULT_RUNNER_MAX_IDLE
    runner_max_lifetime: float = DEFAULT_RUNNER_MAX_LIFETIME
    group_commit_ms: int = DEFAULT_GROUP_COMMIT_MS
    claim_batch_max: int = DEFAULT_CLAIM_BATCH_MAX
    retry_backoff_base: float = DEFAULT_RETRY_BACKOFF_BASE
    retry_backoff_max: float = DEFAULT_RETRY_BACKOFF_MAX
    retry_jitter: float = DEFAULT_RETRY_JITTER
    run_time_budget: float = DEFAULT_RUN_TIME_BUDGET
    run_time_limit: float = DEFAULT_RUN_TIME_LIMIT
    """Seconds a handler may work on one run (0: no limit); a handler's ``time_limit`` wins."""
    run_time_limit_grace: float = DEFAULT_RUN_TIME_LIMIT_GRACE
    redact_patterns: tuple[str, ...] = DEFAULT_REDACT_PATTERNS
    """TaskData keys that contain one of these are redacted wherever data is shown."""
    pubsub_url: str = ""
    dashboard_token: str = dataclass_field(default="", repr=False)
    """Bearer token that allows enqueue, cancel and retry over HTTP (empty: read-only).
    Left out of ``repr`` so that logging the settings never shows it."""
    flower_url: str = ""
    """Base URL of Flower; the dashboard links runs and workers to it (empty: no links)."""
    dashboard_url: str = ""
    """The dashboard's base URL as its users reach it; ``celery-taskq show`` links each task
    to its page there (empty: no links)."""
    dashboard_refresh_interval: float = DEFAULT_DASHBOARD_REFRESH_INTERVAL
    """Seconds between the dashboard pages' in-place updates (0: the pages stay as loaded)."""
    handler_runners: bool = True
    """Whether Celery workers run handler tasks; ``False`` is audit-only mode."""
    internal_task_events: bool = False
    """Whether beat ticks and runner tasks send Celery task events (Flower then shows them)."""
    fork_preload: bool = True
    """Whether a Celery worker's main process loads the database stack and freezes its heap
    before the pool forks, so that pool processes share that memory."""
    db_schema: str = ""
    """PostgreSQL schema of the tables (empty: the connection's default schema)."""
    native_lost_after: float = DEFAULT_NATIVE_LOST_AFTER
    """Seconds after its due time a published native task that never started counts as
    possibly lost (reports, dashboard, metrics); it is never re-published unless asked."""
    audit_write_behind: bool = DEFAULT_AUDIT_WRITE_BEHIND
    """Whether native audit writes are batched by a background thread (``False``: each is
    committed before the task goes on)."""
    audit_batch_size: int = DEFAULT_AUDIT_BATCH_SIZE
    audit_batch_window: float = DEFAULT_AUDIT_BATCH_WINDOW
    retention: str = ""
    """How long finished rows are kept, e.g. ``success=7d,error=90d`` (empty: keep everything);
    OnProcess prunes by it (:mod:`celery_taskq.core.retention`)."""
    retention_batch_size: int = DEFAULT_RETENTION_BATCH_SIZE
    concurrency: str = ""
    """Most runs of a queue or handler running at once, across hosts, e.g.
    ``reports=2,handler:myapp.Export=1`` (empty: no limit)."""
    rate_limits: str = ""
    """Most runs of a queue or handler started per period, across hosts, e.g.
    ``handler:myapp.Export=10/m`` (empty: no limit)."""

    def __post_init__(self) -> None:
        if not self.hostname:
            object.__setattr__(self, "hostname", socket.gethostname())
        _require(self.task_runner_limit >= 0, "task_runner_limit must be 0 or more")
        _require(self.runner_memory_limit_mb > 0, "runner_memory_limit_mb must be positive")
        _require(self.output_cap_bytes > 0, "output_cap_bytes must be positive")
        _require(self.task_data_max_bytes > 0, "task_data_max_bytes must be positive")
        _require(self.result_max_bytes > 0, "result_max_bytes must be positive")
        _require(self.lease_margin >= 0, "lease_margin must be 0 or more")
        _require(self.poll_interval > 0, "poll_interval must be positive")
        _require(self.heartbeat_interval > 0, "heartbeat_interval must be positive")
        _require(self.process_interval > 0, "process_interval must be positive")
        _require(self.create_runners_interval > 0, "create_runners_interval must be positive")
        _require(self.runner_max_idle >= 0, "runner_max_idle must be 0 or more")
        _require(self.runner_max_lifetime > 0, "runner_max_lifetime must be positive")
        _require(0 <= self.group_commit_ms <= 1000, "group_commit_ms must be from 0 to 1000")
        _require(1 <= self.claim_batch_max <= 1000, "claim_batch_max must be from 1 to 1000")
        _require(self.retry_backoff_base >= 0, "retry_backoff_base must be 0 or more")
        _require(self.retry_backoff_max >= 0, "retry_backoff_max must be 0 or more")
        _require(0 <= self.retry_jitter <= 1, "retry_jitter must be from 0 to 1")
        _require(self.run_time_budget > 0, "run_time_budget must be positive")
        _require(self.run_time_limit >= 0, "run_time_limit must be 0 (none) or more")
        _require(self.run_time_limit_grace > 0, "run_time_limit_grace must be positive")
        _require(self.native_lost_after > 0, "native_lost_after must be positive")
        _require(
            self.dashboard_refresh_interval >= 0, "dashboard_refresh_interval must be 0 or more"
        )
        _require(self.audit_batch_size > 0, "audit_batch_size must be positive")
        _require(self.audit_batch_window >= 0, "audit_batch_window must be 0 or more")
        _require(
            1 <= self.retention_batch_size <= MAX_BATCH_SIZE,
            f"retention_batch_size must be from 1 to {MAX_BATCH_SIZE}",
        )
        try:
            RetentionPolicy.parse(self.retention)
        except ValueError as exc:
            raise ConfigurationError(f"retention {self.retention!r} is not valid: {exc}") from exc
        try:
            parse_limits(self.concurrency, self.rate_limits)
        except ValueError as exc:
            raise ConfigurationError(f"concurrency or rate_limits is not valid: {exc}") from exc
        _require(
            self.heartbeat_timeout > self.heartbeat_interval,
            "heartbeat_timeout must be longer than heartbeat_interval",
        )

    @property
    def retention_policy(self) -> RetentionPolicy:
        """The ``retention`` setting, parsed."""
        return RetentionPolicy.parse(self.retention)

    @property
    def limits(self) -> dict[str, LimitSpec]:
        """The ``concurrency`` and ``rate_limits`` settings, parsed, by ``TaskqLimits.Name``."""
        return parse_limits(self.concurrency, self.rate_limits)

    @classmethod
    def resolve(
        cls,
        overrides: Mapping[str, Any] | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> Settings:
        """Resolve from ``environ`` (default ``os.environ``), then ``overrides``, then defaults."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for field in fields(cls):
            env_name = ENV_PREFIX + field.name.upper()
            if env_name in environ:
                values[field.name] = _parse(field.name, environ[env_name], env_name)
            elif overrides is not None and overrides.get(field.name) is not None:
                values[field.name] = _coerce(field.name, overrides[field.name])
        return cls(**values)


ENV_PREFIX = "TASKQ_"
"""Every setting ``x`` is read from the environment variable ``TASKQ_X``."""

_INT_FIELDS = {
    "task_runner_limit",
    "runner_memory_limit_mb",
    "output_cap_bytes",
    "task_data_max_bytes",
    "result_max_bytes",
    "audit_batch_size",
    "retention_batch_size",
    "group_commit_ms",
    "claim_batch_max",
}
_FLOAT_FIELDS = {
    "poll_interval",
    "heartbeat_interval",
    "heartbeat_timeout",
    "lease_margin",
    "process_interval",
    "create_runners_interval",
    "runner_max_idle",
    "runner_max_lifetime",
    "retry_backoff_base",
    "retry_backoff_max",
    "retry_jitter",
    "run_time_budget",
    "run_time_limit",
    "run_time_limit_grace",
    "native_lost_after",
    "dashboard_refresh_interval",
    "audit_batch_window",
}

_TUPLE_FIELDS = {"allowed_handler_prefixes", "imports", "redact_patterns"}

_BOOL_FIELDS = {"handler_runners", "internal_task_events", "fork_preload", "audit_write_behind"}
_TRUE_WORDS = {"1", "true", "yes", "on"}
_FALSE_WORDS = {"0", "false", "no", "off"}


def _parse(name: str, raw: str, source: str) -> Any:
    try:
        return _coerce(name, raw)
    except (ValueError, TypeError) as exc:
        raise ConfigurationError(f"{source}={raw!r} is not valid: {exc}") from exc


def _coerce(name: str, value: Any) -> Any:
    if name in _BOOL_FIELDS:
        return _boolean(value)
    if name in _INT_FIELDS:
        return int(value)
    if name in _FLOAT_FIELDS:
        return float(value)
    if name == "retention":
        RetentionPolicy.parse(str(value))  # refused here, so the message names the variable
    if name == "concurrency":
        parse_limits(str(value), "")
    if name == "rate_limits":
        parse_limits("", str(value))
    if name in _TUPLE_FIELDS:
        items = value.split(",") if isinstance(value, str) else list(value)
        return tuple(item.strip() for item in items if item.strip())
    return str(value)


def _boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    word = str(value).strip().lower()
    if word in _TRUE_WORDS:
        return True
    if word in _FALSE_WORDS:
        return False
    raise ValueError("expected true or false (1/0, yes/no, on/off)")


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigurationError(message)
