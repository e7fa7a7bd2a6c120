"""The beat tick claim: each periodic event runs once per time slot, however many beats tick."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    Connection,
    delete,
)

from celery_taskq.core.models import (
    BeatTick,
)
from celery_taskq.core.storage.dialects import upsert

BEAT_TICKS_KEPT = 1000
"""Tick rows kept per event; older ones are pruned as new ones are claimed."""


def claim_beat_tick(connection: Connection, event: str, slot: int, now: datetime) -> bool:
    """Record that ``event`` ran in time ``slot``; ``False`` if another beat's tick already did."""
    statement = (
        upsert(connection, BeatTick)
        .values(event=event, slot=slot, ticked_on=now)
        .on_conflict_do_nothing()
    )
    claimed = connection.execute(statement.returning(BeatTick.slot)).first() is not None
    if claimed:
        connection.execute(
            delete(BeatTick).where(BeatTick.event == event, BeatTick.slot < slot - BEAT_TICKS_KEPT)
        )
    return claimed
