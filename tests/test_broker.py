"""The server-less broker: kombu's SQL transport, tuned, and pruned of delivered messages."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pytest
from celery import Celery
from kombu.connection import Connection
from sqlalchemy import create_engine, text

from celery_taskq.celery import install
from celery_taskq.celery.broker import (
    TRANSPORT_PATH,
    SQLTransport,
    prune_sql_broker,
    split_sql_broker_url,
)
from celery_taskq.core.settings import Settings


def test_sql_broker_urls_use_the_tuned_transport(tmp_path: Path) -> None:
    url = f"sqla+sqlite:///{tmp_path / 'broker.db'}"
    app = Celery("t", broker=url)
    install(app, settings=Settings(database_url=f"sqlite:///{tmp_path / 'db.db'}"))
    assert app.conf.broker_transport == TRANSPORT_PATH
    assert app.conf.broker_url == f"sqlite:///{tmp_path / 'broker.db'}"
    assert SQLTransport.polling_interval < 1.0
    with app.connection_for_write() as connection:
        assert isinstance(connection.transport, SQLTransport)
    assert split_sql_broker_url("redis://localhost:6379/0") is None


# kombu's own models use SQLAlchemy's deprecated `noload`; nothing of ours to fix.
@pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated")
def test_prune_deletes_only_old_delivered_messages(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'broker.db'}"
    # Given three messages through the real transport: two delivered, one waiting
    with Connection(url, transport=TRANSPORT_PATH) as connection:  # type: ignore[no-untyped-call]
        queue = connection.SimpleQueue("jobs")
        for payload in ("old", "new", "waiting"):
            queue.put(payload)
        for _ in range(2):
            queue.get(timeout=5).ack()
        queue.close()
    engine = create_engine(url)
    with engine.begin() as connection:
        connection.execute(
            text(
                "UPDATE kombu_message SET timestamp = :old"
                " WHERE id = (SELECT min(id) FROM kombu_message)"
            ),
            {"old": datetime.now() - timedelta(hours=1)},
        )
    # When the broker is pruned
    prune_sql_broker(url)
    # Then only the old delivered message is gone
    with engine.connect() as connection:
        left = connection.execute(text("SELECT id, visible FROM kombu_message ORDER BY id")).all()
    engine.dispose()
    assert [(message_id, bool(visible)) for message_id, visible in left] == [(2, False), (3, True)]


def test_an_app_without_a_broker_takes_the_taskq_broker_setting(tmp_path: Path) -> None:
    app = Celery("t")
    install(app, settings=Settings(broker_url="redis://127.0.0.1:6399/3"))
    assert app.conf.broker_url == "redis://127.0.0.1:6399/3"


def test_the_apps_own_broker_wins(tmp_path: Path) -> None:
    app = Celery("t", broker="redis://127.0.0.1:6399/1")
    install(app, settings=Settings(broker_url="redis://127.0.0.1:6399/3"))
    assert app.conf.broker_url == "redis://127.0.0.1:6399/1"
