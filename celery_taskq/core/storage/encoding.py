"""How JSON values are written: :func:`write_json`, the engines' JSON serializer.

A value serialized once already (:class:`JsonText`, e.g. the arguments the native audit turned
into JSON in the caller's thread) is stored as it is, not serialized again; anything else is
``json.dumps``-ed as SQLAlchemy would. On PostgreSQL the same serializer is psycopg's for the
engine's connections, so a ``Jsonb`` bound on the driver's cursor takes it too.
"""

from __future__ import annotations

import json
from typing import Any


class JsonText(str):
    """A JSON document, as text: written as it is."""

    __slots__ = ()


def write_json(value: Any) -> str:
    """``value`` as JSON text (a :class:`JsonText` unchanged)."""
    if isinstance(value, JsonText):
        return value
    return json.dumps(value)
