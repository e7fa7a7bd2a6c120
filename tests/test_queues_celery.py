"""Runner dispatch per queue under Celery: runner tasks are shared out among the queues whose
runs wait, go to a queue's own Celery queue where the app declares it, and serve that queue
only (on both databases; the app publishes to kombu's in-memory broker, and the runner task
runs in this process)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from celery import Celery
from kombu.connection import Connection as KombuConnection
from kombu.entity import Queue

from celery_taskq.celery import install
from celery_taskq.celery.routing import RUNNER_TASK, RUNNERS_QUEUE, runner_queue_name
from celery_taskq.celery.tasks import send_runners
from celery_taskq.core.models import RunStatus
from celery_taskq.core.settings import Settings
from celery_taskq.core.statements.dispatch import QueueDemand, split_by_queue
from celery_taskq.core.storage.database import Database
from tests.helpers import task_row

SUCCEED = "tests.handlers.Succeed"


@pytest.mark.parametrize(
    ("wanted", "waiting", "shares"),
    [
        (0, {"a": QueueDemand(3, 0)}, {}),
        (5, {"a": QueueDemand(3, 0)}, {"a": 3}),
        (3, {"a": QueueDemand(5, 0), "b": QueueDemand(1, 0)}, {"a": 2, "b": 1}),
        # the queue holding the highest-priority run gets the first runner
        (1, {"a": QueueDemand(5, 0), "b": QueueDemand(1, 9)}, {"b": 1}),
        (
            4,
            {"a": QueueDemand(9, 0), "b": QueueDemand(9, 0), "c": QueueDemand(1, 0)},
            {"a": 2, "b": 1, "c": 1},
        ),
        # a queue whose concurrency limit leaves room for one run gets one runner
        (5, {"a": QueueDemand(9, 5, runnable=1), "b": QueueDemand(2, 0)}, {"a": 1, "b": 2}),
        (5, {"a": QueueDemand(9, 5, runnable=0)}, {}),
    ],
)
def test_runners_are_shared_among_the_queues_in_turn(
    wanted: int, waiting: dict[str, QueueDemand], shares: dict[str, int]
) -> None:
    assert split_by_queue(wanted, waiting) == shares
    assert sum(shares.values()) == min(wanted, sum(q.takeable for q in waiting.values()))


@pytest.fixture
def app(settings: Settings) -> Iterator[Celery]:
    """An app on an in-memory broker that declares a Celery queue for the ``reports`` queue's
    runner tasks beside celery_taskq's runner queue."""
    app = Celery("queues_test", broker="memory://", set_as_current=False)
    names = ("celery", RUNNERS_QUEUE, runner_queue_name("reports"))
    app.conf.task_queues = [Queue(name) for name in names]  # type: ignore[no-untyped-call]
    install(app, settings=replace(settings, runner_max_idle=0.0))
    for queue in app.conf.task_queues:  # the in-memory broker is shared by the whole process
        sent_runner_tasks(app, queue.name)
    yield app
    app.close()


def sent_runner_tasks(app: Celery, queue: str) -> list[dict[str, Any]]:
    """The kwargs of the runner tasks waiting in the Celery queue ``queue``."""
    sent: list[dict[str, Any]] = []
    connection: KombuConnection = app.connection_for_read()
    with connection, connection.SimpleQueue(queue) as waiting:  # type: ignore[no-untyped-call]
        while True:
            try:
                message = waiting.get(block=False)
            except waiting.Empty:
                return sent
            assert message.headers["task"] == RUNNER_TASK
            sent.append(message.payload[1])
            message.ack()


def test_runner_tasks_go_per_queue_and_serve_only_their_queue(
    app: Celery, database: Database
) -> None:
    service = app.taskq.service
    # Given two due runs in "reports" (whose runner tasks have a Celery queue) and one in "mail"
    reports = [service.add_task(SUCCEED, queue="reports", create_run=True) for _ in range(2)]
    mail = service.add_task(SUCCEED, queue="mail", priority=3, create_run=True)
    # When the runner tasks are sent
    assert send_runners(app, app.taskq, service) == 3
    # Then reports' go to their own Celery queue, mail's to the runners' queue
    assert sent_runner_tasks(app, runner_queue_name("reports")) == [{"queue": "reports"}] * 2
    assert sent_runner_tasks(app, RUNNERS_QUEUE) == [{"queue": "mail"}]
    # And a runner task sent for mail runs mail's run and leaves reports' waiting
    app.tasks[RUNNER_TASK].apply(kwargs={"queue": "mail"})
    assert task_row(database, mail).last_status == RunStatus.SUCCESS
    assert [task_row(database, task).last_status for task in reports] == [RunStatus.SCHEDULED] * 2
