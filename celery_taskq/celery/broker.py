"""The broker that needs no server: kombu's SQLAlchemy transport, tuned for latency and pruned.

kombu's ``sqla+`` transport polls every second by default, and its ``polling_interval``
transport option cannot be used because the transport hands every option to
``create_engine``. :class:`SQLTransport` sets the interval as a class attribute instead;
:func:`celery_taskq.celery.install` uses it for every ``sqla+`` broker URL, through Celery's
``broker_transport`` setting. kombu never deletes delivered messages: OnProcess does
(:func:`prune_sql_broker`).
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from kombu.transport.sqlalchemy import Transport
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

logger = logging.getLogger(__name__)

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


BROKER_MESSAGES_KEPT_FOR = timedelta(minutes=10)
"""Delivered messages of the SQLAlchemy broker older than this are deleted by OnProcess."""


def prune_sql_broker(database_url: str) -> None:
    """Delete delivered messages of kombu's SQLAlchemy transport, which it never deletes."""
    engine = create_engine(make_url(database_url))
    cutoff = datetime.now() - BROKER_MESSAGES_KEPT_FOR  # kombu stores naive local time
    try:
        with engine.begin() as connection:
            connection.execute(
                text("DELETE FROM kombu_message WHERE visible = :false AND timestamp < :cutoff"),
                {"false": False, "cutoff": cutoff},
            )
    except Exception:
        logger.exception("pruning the SQL broker failed", extra={"action": "broker_prune_failed"})
    finally:
        engine.dispose()
