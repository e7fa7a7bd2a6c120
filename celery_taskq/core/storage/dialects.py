"""What statements build differently on the two databases: an ``INSERT`` knowing ``ON CONFLICT``."""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    Connection,
)
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert


def upsert(connection: Connection, model: type[Any]) -> Any:
    """The dialect's ``INSERT`` construct, which knows ``ON CONFLICT``."""
    if connection.dialect.name == "postgresql":
        return postgresql_insert(model)
    return sqlite_insert(model)
