"""The retention policy: how long finished rows are kept, per task status and kind of row.

A policy is written ``success=7d,error=90d`` (the ``retention`` setting, ``TASKQ_RETENTION``):
each key is a finished task status (``success``, ``error``, ``timeout``) or one of the other
kinds pruning deletes (``runners``: finished runner rows; ``ticks``: beat-tick and
schedule-slot rows), each value an age such as ``30d``, ``12h``, ``90m``, ``45s`` or ``2w``.
Kinds left out of a policy that names any status follow its longest status age; an empty
policy keeps everything. Pure values: nothing here touches the database.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from celery_taskq.core.models import RunStatus

FINISHED_STATUSES = (RunStatus.SUCCESS, RunStatus.ERROR, RunStatus.TIMEOUT)
"""The ``LastStatus`` values a finished task may have (and ``--status`` may name)."""

RUNNERS = "runners"
"""Policy key: finished ``TaskRunners`` rows no kept run refers to."""

TICKS = "ticks"
"""Policy key: beat-tick rows (and schedule-slot rows, where that table exists)."""

POLICY_KEYS = (*(status.value for status in FINISHED_STATUSES), RUNNERS, TICKS)
"""Every key a policy may hold."""

PRUNED_KINDS = ("tasks", "runs", "runners", "beat_ticks", "schedule_slots")
"""The kinds of rows pruning counts (``TaskqPrunedRows.Kind``, the metrics' ``kind`` label)."""

MAX_BATCH_SIZE = 10_000
"""Most rows one pruning statement deletes (the ``retention_batch_size`` setting's ceiling)."""

MAX_AGE = timedelta(days=36_500)
"""The longest age a policy or ``prune --older-than`` may give (a hundred years)."""

_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}
_AGE = re.compile(r"(\d{1,7})([smhdw])")


def parse_age(text: str) -> timedelta:
    """``30d`` → 30 days. Units: ``s``, ``m``, ``h``, ``d``, ``w``; a positive whole number.

    Raises ``ValueError`` with a message that names what is wrong.
    """
    written = text.strip().lower()
    match = _AGE.fullmatch(written)
    if match is None:
        raise ValueError(
            f"age {text!r} is not valid: write a whole number and a unit "
            "(s, m, h, d or w), for example 30d or 12h"
        )
    amount, unit = int(match.group(1)), match.group(2)
    if amount == 0:
        raise ValueError(f"age {text!r} is not valid: it must be more than 0")
    seconds = amount * _UNIT_SECONDS[unit]
    if seconds > MAX_AGE.total_seconds():
        raise ValueError(f"age {text!r} is too long: at most {MAX_AGE.days}d")
    return timedelta(seconds=seconds)


def parse_statuses(text: str | tuple[str, ...]) -> tuple[RunStatus, ...]:
    """``success,error`` → the statuses; an unknown or unfinished status raises ``ValueError``."""
    items = text.split(",") if isinstance(text, str) else list(text)
    statuses: list[RunStatus] = []
    for item in (part.strip().lower() for part in items):
        if not item:
            continue
        if item not in {status.value for status in FINISHED_STATUSES}:
            known = ", ".join(status.value for status in FINISHED_STATUSES)
            raise ValueError(f"status {item!r} is not a finished task status: use {known}")
        if RunStatus(item) not in statuses:
            statuses.append(RunStatus(item))
    return tuple(statuses)


@dataclass(frozen=True)
class RetentionPolicy:
    """How long each kind of finished row is kept; a kind absent from ``ages`` is kept."""

    ages: Mapping[str, timedelta] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> RetentionPolicy:
        """Parse ``success=7d,error=90d``; empty text is the keep-everything policy.

        Raises ``ValueError`` naming the part that is wrong.
        """
        ages: dict[str, timedelta] = {}
        for part in (piece.strip() for piece in text.split(",")):
            if not part:
                continue
            key, equals, value = part.partition("=")
            key = key.strip().lower()
            if not equals or not value.strip():
                raise ValueError(f"{part!r} is not valid: write KEY=AGE, for example success=7d")
            if key not in POLICY_KEYS:
                raise ValueError(f"{key!r} is not a retention key: use {', '.join(POLICY_KEYS)}")
            if key in ages:
                raise ValueError(f"{key!r} is given twice")
            ages[key] = parse_age(value)
        status_ages = [ages[status.value] for status in FINISHED_STATUSES if status.value in ages]
        if status_ages:
            for key in (RUNNERS, TICKS):
                ages.setdefault(key, max(status_ages))
        return cls(ages)

    @classmethod
    def everything_older_than(
        cls, age: timedelta, statuses: tuple[RunStatus, ...] = ()
    ) -> RetentionPolicy:
        """``prune --older-than AGE [--status S]``: the given statuses' tasks only, or every
        finished task and every other kind when no status is given."""
        if statuses:
            return cls({status.value: age for status in statuses})
        return cls(dict.fromkeys(POLICY_KEYS, age))

    @property
    def empty(self) -> bool:
        """Whether the policy keeps everything."""
        return not self.ages

    def task_cutoffs(self, now: datetime) -> dict[RunStatus, datetime]:
        """Per finished status: tasks that finished before this time are pruned."""
        return {
            status: now - self.ages[status.value]
            for status in FINISHED_STATUSES
            if status.value in self.ages
        }

    def cutoff(self, key: str, now: datetime) -> datetime | None:
        """Rows of ``runners`` or ``ticks`` older than this are pruned (``None``: kept).

        A written policy gives these kinds the longest status age unless it names them;
        ``prune --status`` leaves them out (kept).
        """
        if key in self.ages:
            return now - self.ages[key]
        return None
