"""Health checks: is the database there, is its schema current, and is work flowing?

Six checks, each failing for its own reason:

============  ======================================================================
check         fails when
============  ======================================================================
database      the database cannot be reached (or, on SQLite, its file does not exist)
schema        its revision is not this version's head (``celery-taskq db upgrade``)
beat          the newest OnProcess tick (``TaskqBeatTicks``) is older than
              ``max_tick_age``, or there is none
runners       a ``running`` runner row's heartbeat is older than ``heartbeat_timeout +
              lease_margin + max_tick_age`` (an OnProcess on time would have timed it
              out), or runs have been due longer than ``heartbeat_timeout`` and no
              runner is alive
due           the oldest due scheduled run has waited longer than ``max_due_age``
dead_letters  more than ``max_dead_letters`` tasks ran out of retries in the last hour
============  ======================================================================

A check that cannot be carried out because an earlier one failed (no database, or a schema
that is not at head) is ``skipped``, not failed: each failure names its own cause.
:func:`check_ready` runs the first two only (the dashboard's ``/readyz``).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, and_, func, or_, select, text

from celery_taskq.core.exceptions import InvalidArgumentError, TaskqError
from celery_taskq.core.models import RunnerRole, RunnerStatus, TaskRunner
from celery_taskq.core.settings import Settings
from celery_taskq.core.storage.database import Database
from celery_taskq.core.storage.migrate import MIGRATIONS_LOCATION, version_table_options
from celery_taskq.reports.backlog import BEAT_EVENTS, PROCESS_EVENT, beat_tick_ages_in
from celery_taskq.reports.dead_letter import dead_letters_in
from celery_taskq.reports.due import due_work_in
from celery_taskq.reports.limits import MAX_LIMIT
from celery_taskq.reports.sql import in_seconds, report_transaction
from celery_taskq.reports.window import ReportWindow, check_now

CHECKS = ("database", "schema", "beat", "runners", "due", "dead_letters")
"""Every check, in the order they run."""

SKIPPABLE = CHECKS[2:]
"""The checks a caller may skip (e.g. ``beat`` where OnProcess runs from cron, not beat)."""

OK, FAILED, SKIPPED = "ok", "failed", "skipped"
"""What became of a check."""

DEFAULT_MAX_DUE_AGE = 300.0
"""Seconds the oldest due run may wait before the ``due`` check fails."""

DEFAULT_MAX_DEAD_LETTERS = 10
"""Tasks that may run out of retries in an hour before the ``dead_letters`` check fails."""

TICK_AGE_INTERVALS = 10
"""The OnProcess tick may be this many ``process_interval`` old by default ..."""

MIN_MAX_TICK_AGE = 30.0
"""... and at least this many seconds (beat's own loop and a busy broker delay ticks)."""

DEAD_LETTER_WINDOW = timedelta(hours=1)
"""How far back the ``dead_letters`` check counts."""

Figure = float | int | str | None


@dataclass(frozen=True)
class CheckResult:
    """One check: ``ok``, ``failed`` or ``skipped``, why, and the figures it judged by."""

    name: str
    state: str
    reason: str
    figures: Mapping[str, Figure] = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        """Whether the check failed (a skipped check did not)."""
        return self.state == FAILED


@dataclass(frozen=True)
class HealthThresholds:
    """The limits the checks judge by; :meth:`of` derives the defaults from the settings."""

    max_tick_age: float
    max_due_age: float = DEFAULT_MAX_DUE_AGE
    max_dead_letters: int = DEFAULT_MAX_DEAD_LETTERS
    heartbeat_timeout: float = 60.0
    """A runner whose heartbeat is younger is alive; due work may wait this long for one."""
    stale_heartbeat: float = 100.0
    """A ``running`` row with an older heartbeat should have been timed out already."""

    def __post_init__(self) -> None:
        for name in ("max_tick_age", "max_due_age", "heartbeat_timeout", "stale_heartbeat"):
            value = getattr(self, name)
            if not value > 0:
                raise InvalidArgumentError(f"{name} must be a positive number of seconds")
        if not 0 <= self.max_dead_letters < MAX_LIMIT:
            raise InvalidArgumentError(f"max_dead_letters must be from 0 to {MAX_LIMIT - 1}")

    @classmethod
    def of(
        cls,
        settings: Settings,
        *,
        max_tick_age: float | None = None,
        max_due_age: float = DEFAULT_MAX_DUE_AGE,
        max_dead_letters: int = DEFAULT_MAX_DEAD_LETTERS,
    ) -> HealthThresholds:
        """The thresholds for ``settings``; ``max_tick_age`` defaults to
        :data:`TICK_AGE_INTERVALS` × ``process_interval``, at least :data:`MIN_MAX_TICK_AGE`."""
        if max_tick_age is None:
            max_tick_age = max(TICK_AGE_INTERVALS * settings.process_interval, MIN_MAX_TICK_AGE)
        return cls(
            max_tick_age=max_tick_age,
            max_due_age=max_due_age,
            max_dead_letters=max_dead_letters,
            heartbeat_timeout=settings.heartbeat_timeout,
            # The overseer times out another host's runner at heartbeat_timeout + lease_margin,
            # and its ticks may be max_tick_age late before the beat check fails instead.
            stale_heartbeat=settings.heartbeat_timeout + settings.lease_margin + max_tick_age,
        )


@dataclass(frozen=True)
class HealthReport:
    """Every check's result, as of ``checked_on``."""

    checked_on: datetime
    checks: tuple[CheckResult, ...]

    @property
    def ok(self) -> bool:
        """Whether no check failed."""
        return not self.failures

    @property
    def failures(self) -> tuple[CheckResult, ...]:
        """The checks that failed, in order."""
        return tuple(check for check in self.checks if check.failed)

    def as_dict(self) -> dict[str, object]:
        """The report as JSON-ready values."""
        return {
            "ok": self.ok,
            "checked_on": self.checked_on.isoformat(),
            "checks": [
                {
                    "name": check.name,
                    "state": check.state,
                    "reason": check.reason,
                    "figures": dict(check.figures),
                }
                for check in self.checks
            ],
        }


def check_ready(database: Database) -> tuple[CheckResult, CheckResult]:
    """The ``database`` and ``schema`` checks: whether the tables can be served."""
    reachable = _check_database(database)
    if reachable.failed:
        return reachable, _skipped("schema", "database")
    return reachable, _check_schema(database)


def check_health(
    database: Database,
    thresholds: HealthThresholds,
    *,
    now: datetime | None = None,
    skip: Iterable[str] = (),
) -> HealthReport:
    """Run every check (those named in ``skip`` are reported ``skipped``) as of ``now``."""
    now = check_now(now)
    skipped = set(skip)
    unknown = skipped.difference(SKIPPABLE)
    if unknown:
        raise InvalidArgumentError(
            f"cannot skip {', '.join(sorted(unknown))}: the checks that can be skipped are "
            f"{', '.join(SKIPPABLE)}"
        )
    results: dict[str, CheckResult] = {}
    database_result, schema_result = check_ready(database)
    results["database"] = database_result
    results["schema"] = schema_result
    blocker = next((result.name for result in results.values() if result.state != OK), None)
    table_checks = SKIPPABLE
    if blocker is not None:
        results.update((name, _skipped(name, blocker)) for name in table_checks)
    else:
        try:
            with report_transaction(database) as connection:
                for name in table_checks:
                    if name not in skipped:
                        results[name] = _TABLE_CHECKS[name](connection, thresholds, now)
        except TaskqError as exc:  # e.g. the database went away between the checks
            results.update(
                (name, CheckResult(name, FAILED, f"could not be read: {_one_line(exc)}"))
                for name in table_checks
                if name not in results
            )
    for name in skipped:
        results[name] = CheckResult(name, SKIPPED, "not checked: skipped on request")
    return HealthReport(checked_on=now, checks=tuple(results[name] for name in CHECKS))


def _one_line(exc: BaseException) -> str:
    """A driver's message on one line (they span several: a probe's log wants one)."""
    return " ".join(str(exc).split())


def _skipped(name: str, blocker: str) -> CheckResult:
    return CheckResult(name, SKIPPED, f"not checked: the {blocker} check did not pass")


def _check_database(database: Database) -> CheckResult:
    url = database.url
    file = url.database if url.get_backend_name() == "sqlite" else None
    # Connecting would create an empty file: a health check writes nothing.
    if file and file != ":memory:" and not Path(file).is_file():
        return CheckResult("database", FAILED, f"no SQLite database file at {url.database}")
    try:
        with database.transaction(read_only=True) as connection:
            connection.execute(text("SELECT 1"))
    except TaskqError as exc:
        return CheckResult("database", FAILED, f"unreachable: {_one_line(exc)}")
    return CheckResult("database", OK, f"reachable ({database.dialect})")


@functools.cache
def head_revision() -> str:
    """The newest migration of this version of celery_taskq."""
    config = Config()
    config.set_main_option("script_location", MIGRATIONS_LOCATION)
    head = ScriptDirectory.from_config(config).get_current_head()
    if head is None:  # pragma: no cover - the package ships its migrations
        raise AssertionError("no migrations found")
    return head


@functools.cache
def _known_revisions() -> frozenset[str]:
    config = Config()
    config.set_main_option("script_location", MIGRATIONS_LOCATION)
    return frozenset(
        script.revision for script in ScriptDirectory.from_config(config).walk_revisions()
    )


def _check_schema(database: Database) -> CheckResult:
    try:
        with database.transaction(read_only=True) as connection:
            context = MigrationContext.configure(
                connection, opts=version_table_options(database.schema)
            )
            current = context.get_current_revision()
    except TaskqError as exc:
        return CheckResult("schema", FAILED, f"its revision could not be read: {_one_line(exc)}")
    head = head_revision()
    figures: dict[str, Figure] = {"revision": current, "head": head}
    if current == head:
        return CheckResult("schema", OK, f"at head ({head})", figures)
    if current is None:
        reason = "no celery_taskq schema: run celery-taskq db upgrade"
    elif current not in _known_revisions():
        reason = f"at revision {current}, unknown to this version (head {head}): a newer one?"
    else:
        reason = f"at revision {current}, behind head {head}: run celery-taskq db upgrade"
    return CheckResult("schema", FAILED, reason, figures)


def _check_beat(connection: Connection, limits: HealthThresholds, now: datetime) -> CheckResult:
    ages = beat_tick_ages_in(connection, now)
    figures: dict[str, Figure] = {f"{event}_tick_age": ages.get(event) for event in BEAT_EVENTS}
    figures["max_tick_age"] = limits.max_tick_age
    age = ages.get(PROCESS_EVENT)
    if age is None:
        reason = "no OnProcess tick recorded: is beat running with celery_taskq's entries?"
        return CheckResult("beat", FAILED, reason, figures)
    if age > limits.max_tick_age:
        reason = f"the last OnProcess tick was {age:.0f} s ago (limit {limits.max_tick_age:g} s)"
        return CheckResult("beat", FAILED, reason, figures)
    return CheckResult("beat", OK, f"OnProcess ticked {age:.0f} s ago", figures)


def _check_runners(connection: Connection, limits: HealthThresholds, now: datetime) -> CheckResult:
    alive_since = now - timedelta(seconds=limits.heartbeat_timeout)
    stale_before = now - timedelta(seconds=limits.stale_heartbeat)
    stale = or_(
        TaskRunner.heartbeat_on < stale_before,
        and_(TaskRunner.heartbeat_on.is_(None), TaskRunner.started_on < stale_before),
    )
    live, stale_count, oldest = connection.execute(
        select(
            func.count().filter(
                TaskRunner.role == RunnerRole.RUNNER, TaskRunner.heartbeat_on >= alive_since
            ),
            func.count().filter(stale),
            func.min(func.coalesce(TaskRunner.heartbeat_on, TaskRunner.started_on)).filter(stale),
        ).where(TaskRunner.status == RunnerStatus.RUNNING)
    ).one()
    due = due_work_in(connection, now, None)
    figures: dict[str, Figure] = {
        "live_runners": live,
        "stale_runners": stale_count,
        "due_runs": due.due_scheduled_runs,
        "oldest_due_age": due.oldest_due_age,
    }
    if stale_count:
        oldest_age = in_seconds(now - oldest) if isinstance(oldest, datetime) else None
        shown = "" if oldest_age is None else f" (the oldest {oldest_age:.0f} s ago)"
        reason = (
            f"{stale_count} running runner(s) stopped sending heartbeats{shown} and were not "
            f"timed out (limit {limits.stale_heartbeat:g} s): is OnProcess running?"
        )
        return CheckResult("runners", FAILED, reason, figures)
    waited = due.oldest_due_age or 0.0
    if live == 0 and due.due_scheduled_runs and waited > limits.heartbeat_timeout:
        reason = (
            f"no runner is alive and {due.due_scheduled_runs} due run(s) have waited up to "
            f"{waited:.0f} s"
        )
        return CheckResult("runners", FAILED, reason, figures)
    return CheckResult("runners", OK, f"{live} runner(s) alive", figures)


def _check_due(connection: Connection, limits: HealthThresholds, now: datetime) -> CheckResult:
    due = due_work_in(connection, now, None)
    figures: dict[str, Figure] = {
        "due_runs": due.due_scheduled_runs,
        "oldest_due_age": due.oldest_due_age,
        "max_due_age": limits.max_due_age,
    }
    waited = due.oldest_due_age or 0.0
    if waited > limits.max_due_age:
        reason = f"the oldest due run has waited {waited:.0f} s (limit {limits.max_due_age:g} s)"
        return CheckResult("due", FAILED, reason, figures)
    return CheckResult("due", OK, f"{due.due_scheduled_runs} run(s) due", figures)


def _check_dead_letters(
    connection: Connection, limits: HealthThresholds, now: datetime
) -> CheckResult:
    window = ReportWindow(since=now - DEAD_LETTER_WINDOW)
    counted = len(dead_letters_in(connection, window, None, limits.max_dead_letters + 1))
    figures: dict[str, Figure] = {
        "dead_letters_last_hour": counted,
        "max_dead_letters": limits.max_dead_letters,
    }
    if counted > limits.max_dead_letters:
        reason = f"more than {limits.max_dead_letters} task(s) ran out of retries in the last hour"
        return CheckResult("dead_letters", FAILED, reason, figures)
    return CheckResult("dead_letters", OK, f"{counted} in the last hour", figures)


_TABLE_CHECKS = {
    "beat": _check_beat,
    "runners": _check_runners,
    "due": _check_due,
    "dead_letters": _check_dead_letters,
}
