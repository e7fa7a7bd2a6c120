"""The broker that needs no server: kombu's SQLAlchemy transport, tuned for latency.

kombu's ``sqla+`` transport polls every second by default, and its ``polling_interval``
transport option cannot be used because the transport hands every option to
``create_engine``. :class:`SQLTransport` sets the interval as a class attribute instead;
:func:`celery_taskq.celery.install` uses it for every ``sqla+`` broker URL, through Celery's
``broker_transport`` setting.
"""

from __future__ import annotations

from kombu.transport.sqlalchemy import Transport

POLLING_INTERVAL = 0.1
"""Seconds between polls of an idle queue (kombu's default is 1.0)."""


class SQLTransport(Transport):
    """kombu's SQLAlchemy transport with a shorter polling interval."""

    polling_interval = POLLING_INTERVAL


SQL_PREFIX = "sqla+"
TRANSPORT_PATH = f"{__name__}:SQLTransport"
"""Value for Celery's ``broker_transport`` setting (kombu takes import paths only there)."""


def split_sql_broker_url(url: str) -> str | None:
    """The database URL of a ``sqla+<database URL>`` broker URL, or ``None`` for another broker."""
    return url.removeprefix(SQL_PREFIX) if url.startswith(SQL_PREFIX) else None
