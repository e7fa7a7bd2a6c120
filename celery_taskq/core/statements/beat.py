"""The beat tick claim (each periodic event runs once per time slot, however many beats tick),
and the relaxed commit of what a tick writes that the next tick would write again.

On PostgreSQL the claim is one statement, run in autocommit: the tick row's insert, the pruning
of old tick rows, and an asynchronous commit (``synchronous_commit`` off for this statement's
own transaction only). A tick row lost in a crash of the database server costs at most one
tick carried out twice, and every step of a tick may run twice (each re-reads the tables and
changes only what is still to change); a durable commit would cost an fsync on every tick.
The runs a tick creates commit the same way (:func:`relax_commit`): lost, they are created
again by the next tick, and a runner's claim of one, committed durably, flushes the write-ahead
log up to it first.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    Connection,
    delete,
    text,
)

from celery_taskq.core.models import (
    BeatTick,
)
from celery_taskq.core.storage.dialects import upsert

BEAT_TICKS_KEPT = 1000
"""Tick rows kept per event; older ones are pruned as new ones are claimed."""

_PG_CLAIM_BEAT_TICK = text(
    """WITH claimed AS (
        INSERT INTO "TaskqBeatTicks" ("Event", "Slot", "TickedOn")
        SELECT CAST(:event AS VARCHAR), CAST(:slot AS BIGINT), CAST(:now AS TIMESTAMPTZ)
        FROM (SELECT set_config('synchronous_commit', 'off', true)) AS relaxed_commit
        ON CONFLICT DO NOTHING
        RETURNING "Slot"
    ), pruned AS (
        DELETE FROM "TaskqBeatTicks"
        WHERE "Event" = CAST(:event AS VARCHAR) AND "Slot" < CAST(:oldest_kept AS BIGINT)
            AND EXISTS (SELECT FROM claimed)
    )
    SELECT "Slot" FROM claimed"""
)
"""The claim on PostgreSQL: insert the tick row and, only if it was this caller's, prune the
event's rows older than the kept ones. ``set_config(…, true)`` lasts until the statement's
own (implicit) transaction ends: its commit does not wait for the WAL to reach the disk."""


def claim_beat_tick(connection: Connection, event: str, slot: int, now: datetime) -> bool:
    """Record that ``event`` ran in time ``slot``; ``False`` if another beat's tick already did.

    On PostgreSQL, call it on an autocommit connection
    (:meth:`~celery_taskq.core.storage.database.Database.autocommit`): the relaxed commit is
    then the claim's alone.
    """
    oldest_kept = slot - BEAT_TICKS_KEPT
    if connection.dialect.name == "postgresql":
        claimed_slot = connection.execute(
            _PG_CLAIM_BEAT_TICK,
            {"event": event, "slot": slot, "now": now, "oldest_kept": oldest_kept},
        ).first()
        return claimed_slot is not None
    statement = (
        upsert(connection, BeatTick)
        .values(event=event, slot=slot, ticked_on=now)
        .on_conflict_do_nothing()
    )
    claimed = connection.execute(statement.returning(BeatTick.slot)).first() is not None
    if claimed:
        connection.execute(
            delete(BeatTick).where(BeatTick.event == event, BeatTick.slot < oldest_kept)
        )
    return claimed


_PG_RELAX_COMMIT = text("SET LOCAL synchronous_commit = off")


def relax_commit(connection: Connection) -> None:
    """Let the connection's current transaction commit without waiting for the write-ahead log
    to reach the disk (PostgreSQL; nothing on SQLite). Only for writes that a later tick
    repeats when they are lost: the setting ends with the transaction."""
    if connection.dialect.name == "postgresql":
        connection.execute(_PG_RELAX_COMMIT)
