"""enqueue_many in one transaction, and enqueue joining the caller's session or connection."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import Column, Connection, Integer, MetaData, String, Table, create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from celery_taskq import TaskSpec, api, enqueue, enqueue_many, enqueue_steps
from celery_taskq.core.exceptions import InvalidArgumentError, InvalidTaskError
from celery_taskq.core.models import RunStatus, TaskQueue, TaskRun
from celery_taskq.core.queue import TaskQueueService
from celery_taskq.core.storage.database import Database
from tests.conftest import FakeClock
from tests.helpers import count, runs_of, task_row

SUCCEED = "tests.handlers.Succeed"

app_metadata = MetaData()
orders = Table(
    "app_orders",
    app_metadata,
    Column("id", Integer, primary_key=True),
    Column("item", String(50)),
)


def test_enqueue_many_writes_every_task_in_order(
    service: TaskQueueService, database: Database, clock: FakeClock
) -> None:
    later = clock() + timedelta(hours=1)
    specs: list[TaskSpec | dict[str, Any]] = [
        TaskSpec(SUCCEED, {"n": 0}, queued_by="batch"),
        {"handler": SUCCEED, "data": {"n": 1}, "title": "second", "max_retries": 2},
        TaskSpec(SUCCEED, {"n": 2}, scheduled_on=later),
    ]
    ids = service.add_tasks(specs, create_run=True)
    assert ids == sorted(ids)
    assert len(ids) == 3
    rows = [task_row(database, task_id) for task_id in ids]
    assert [row.task_data for row in rows] == [{"n": 0}, {"n": 1}, {"n": 2}]
    assert (rows[0].queued_by_id, rows[1].title, rows[1].max_retries) == ("batch", "second", 2)
    assert [row.last_status for row in rows] == [RunStatus.SCHEDULED, RunStatus.SCHEDULED, None]
    assert [len(runs_of(database, task_id)) for task_id in ids] == [1, 1, 0]
    assert rows[2].scheduled_on == later


def test_one_bad_task_refuses_the_whole_batch(
    service: TaskQueueService, database: Database
) -> None:
    batches: list[tuple[Any, str]] = [
        ([TaskSpec(SUCCEED), TaskSpec("tests.nowhere.X")], "task 1: .*no module named"),
        ([TaskSpec(SUCCEED), {"handler": SUCCEED, "data": {1, 2}}], "task 1: .*JSON"),
        ([{"handler": SUCCEED, "colour": "red"}], "task 0: unknown task keys: colour"),
        ([{"data": {}}], "task 0: a task needs a 'handler'"),
        ([TaskSpec(SUCCEED, max_retries=0)], "task 0: max_retries"),
        (["tests.handlers.Succeed"], "task 0: a task must be a TaskSpec or a mapping"),
        ("tests.handlers.Succeed", "tasks must be a list"),
    ]
    for tasks, message in batches:
        with pytest.raises(InvalidTaskError, match=message):
            service.add_tasks(tasks, create_run=True)
    assert (count(database, TaskQueue), count(database, TaskRun)) == (0, 0)


def test_unique_keys_hold_within_a_batch_and_against_the_table(
    service: TaskQueueService, database: Database
) -> None:
    existing = service.add_task(SUCCEED, unique_key="k1")
    ids = service.add_tasks(
        [
            TaskSpec(SUCCEED, unique_key="k1"),
            TaskSpec(SUCCEED, unique_key="k2"),
            TaskSpec(SUCCEED, unique_key="k2"),
            TaskSpec(SUCCEED),
        ]
    )
    assert ids[0] == existing
    assert ids[1] == ids[2] != existing
    assert count(database, TaskQueue) == 3


def test_a_batch_costs_at_most_two_inserts_whatever_its_size(
    service: TaskQueueService, database: Database
) -> None:
    statements: list[str] = []

    def record(_conn: Connection, _cursor: Any, statement: str, *_args: Any) -> None:
        if "INSERT INTO" in statement.upper():
            statements.append(statement)

    event.listen(database.engine, "before_cursor_execute", record)
    try:
        ids = service.add_tasks([TaskSpec(SUCCEED, {"n": n}) for n in range(500)], create_run=True)
    finally:
        event.remove(database.engine, "before_cursor_execute", record)
    assert len(ids) == len(set(ids)) == 500
    # PostgreSQL: one statement inserts the tasks and their runs; SQLite: one each
    assert len(statements) == (1 if database.dialect == "postgresql" else 2)
    assert count(database, TaskRun) == 500


def test_odd_values_in_one_batch_are_stored_as_given(
    service: TaskQueueService, database: Database, clock: FakeClock
) -> None:
    # On PostgreSQL each column travels as one binary array: NULLs among values, text beyond
    # the BMP, a document near the size limit, times in other zones, unique keys (some taken
    # within the batch) between plain tasks, and a column that is NULL in every row.
    huge = {"blob": "\u00e9\U0001f600" * 100_000, "list": list(range(1000))}
    tokyo = timezone(timedelta(hours=9))
    later = (clock() + timedelta(hours=1)).astimezone(tokyo)
    earlier = (clock() - timedelta(days=3)).astimezone(timezone(timedelta(hours=-5, minutes=-30)))
    specs: list[TaskSpec] = [
        TaskSpec(SUCCEED, {"text": "caf\u00e9 \U0001f600 \u05e9\u05dc\u05d5\u05dd", "q": '"\\{,}'}),
        TaskSpec(SUCCEED, huge, title="\u65e5\u672c\u8a9e", queued_by="\U0001f916 bot"),
        TaskSpec(SUCCEED, None, scheduled_on=later, priority=-1000, queue="q.b-1"),
        TaskSpec(SUCCEED, [None, 1.5, True, {"": []}], unique_key="k", scheduled_on=earlier),
        TaskSpec(SUCCEED, "NULL", unique_key="k"),
        TaskSpec(SUCCEED, {"n": None}, max_retries=2**31 - 1, priority=1000, title="{}"),
    ]
    ids = service.add_tasks(specs, create_run=True)
    assert ids[3] == ids[4]
    assert ids[:3] == sorted(ids[:3])
    assert len(set(ids)) == 5
    rows = [task_row(database, task_id) for task_id in ids]
    assert [row.task_data for row in rows] == [
        {"text": "caf\u00e9 \U0001f600 \u05e9\u05dc\u05d5\u05dd", "q": '"\\{,}'},
        huge,
        {},
        [None, 1.5, True, {"": []}],
        [None, 1.5, True, {"": []}],
        {"n": None},
    ]
    assert [row.title for row in rows] == [None, "\u65e5\u672c\u8a9e", None, None, None, "{}"]
    assert [row.queued_by_id for row in rows] == [None, "\U0001f916 bot", None, None, None, None]
    assert rows[2].scheduled_on == later
    assert rows[3].scheduled_on == earlier
    assert [(row.queue, row.priority) for row in rows] == [
        ("default", 0),
        ("default", 0),
        ("q.b-1", -1000),
        ("default", 0),
        ("default", 0),
        ("default", 1000),
    ]
    assert rows[5].max_retries == 2**31 - 1
    assert [row.last_status for row in rows] == [
        RunStatus.SCHEDULED,
        RunStatus.SCHEDULED,
        None,
        RunStatus.SCHEDULED,
        RunStatus.SCHEDULED,
        RunStatus.SCHEDULED,
    ]
    assert [len(runs_of(database, task_id)) for task_id in ids] == [1, 1, 0, 1, 1, 1]
    assert [(run.queue, run.priority) for run in runs_of(database, ids[5])] == [("default", 1000)]


def test_a_batch_of_alike_tasks_stores_each_value_for_every_task(
    service: TaskQueueService, database: Database, clock: FakeClock
) -> None:
    # On PostgreSQL a column with one value for the whole batch goes as that one value.
    spec = TaskSpec(
        SUCCEED,
        {"to": "\u00e9\U0001f600", "n": [1, None]},
        scheduled_on=clock() - timedelta(minutes=1),
        max_retries=7,
        queued_by="batch",
        title="alike",
        queue="q1",
        priority=-5,
    )
    statements: list[str] = []

    def record(_conn: Connection, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement)

    event.listen(database.engine, "before_cursor_execute", record)
    try:
        ids = service.add_tasks([spec] * 4, create_run=True)
    finally:
        event.remove(database.engine, "before_cursor_execute", record)
    if database.dialect == "postgresql":  # no column went as an array
        assert [s for s in statements if "INSERT" in s and "unnest" in s] == []
        assert len([s for s in statements if "INSERT" in s]) == 1
    assert ids == sorted(ids)
    assert len(set(ids)) == 4
    stored = {
        (
            row.task_handler_class,
            json.dumps(row.task_data, sort_keys=True),
            row.scheduled_on,
            row.queued_on,
            row.queued_by_id,
            row.last_status,
            row.max_retries,
            row.title,
            row.queue,
            row.priority,
        )
        for row in (task_row(database, task_id) for task_id in ids)
    }
    assert stored == {
        (
            SUCCEED,
            json.dumps({"to": "\u00e9\U0001f600", "n": [1, None]}, sort_keys=True),
            clock() - timedelta(minutes=1),
            clock(),
            "batch",
            RunStatus.SCHEDULED,
            7,
            "alike",
            "q1",
            -5,
        )
    }
    runs = [run for task_id in ids for run in runs_of(database, task_id)]
    assert [(run.status, run.queue, run.priority) for run in runs] == [
        (RunStatus.SCHEDULED, "q1", -5)
    ] * 4


def test_a_batch_of_tasks_none_due_gets_no_runs(
    service: TaskQueueService, database: Database, clock: FakeClock
) -> None:
    later = clock() + timedelta(minutes=5)
    ids = service.add_tasks([TaskSpec(SUCCEED, scheduled_on=later)] * 3, create_run=True)
    assert ids == sorted(ids)
    assert len(set(ids)) == 3
    assert [task_row(database, task_id).last_status for task_id in ids] == [None] * 3
    assert count(database, TaskRun) == 0


def test_a_batch_loads_each_handler_once_and_validates_every_task(
    service: TaskQueueService, database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    created: list[str] = []
    create = service.create_task_handler

    def counting(path: str) -> Any:
        created.append(path)
        return create(path)

    monkeypatch.setattr(service, "create_task_handler", counting)
    good = {"handler": "tests.handlers.RefuseNegative", "data": {"n": 1}}
    ids = service.add_tasks([good, {"handler": SUCCEED}] * 3, create_run=True)
    assert len(ids) == 6
    assert sorted(created) == ["tests.handlers.RefuseNegative", SUCCEED]
    with pytest.raises(InvalidTaskError, match=r"task 4: task data refused.*negative"):
        service.add_tasks([good, good, good, good, {**good, "data": {"n": -1}}])
    assert count(database, TaskQueue) == 6


# -- joining the caller's transaction ----------------------------------------------------------


@pytest.fixture
def app_engine(database_url: str) -> Iterator[Engine]:
    """The application's own engine on the same database, with a table of its own."""
    engine = create_engine(database_url)
    app_metadata.create_all(engine)
    yield engine
    app_metadata.drop_all(engine)
    engine.dispose()


@pytest.fixture
def wakeups() -> list[int]:
    """Task ids the enqueue hooks were called with."""
    called: list[int] = []
    api.add_enqueue_hook(lambda _service, task_id, _due: called.append(task_id))
    return called


def app_orders(engine: Engine) -> list[str]:
    with engine.connect() as connection:
        return [row.item for row in connection.execute(orders.select())]


def test_enqueue_in_a_session_commits_with_the_callers_data(
    app_engine: Engine, database: Database, database_url: str, wakeups: list[int]
) -> None:
    with Session(app_engine) as session:
        session.execute(orders.insert().values(item="book"))
        task_id = enqueue(SUCCEED, {"order": "book"}, session=session, database_url=database_url)
        assert wakeups == []  # nothing is visible before the commit
        session.commit()
    assert wakeups == [task_id]
    assert app_orders(app_engine) == ["book"]
    assert task_row(database, task_id).task_data == {"order": "book"}
    assert runs_of(database, task_id)[0].status is RunStatus.SCHEDULED


def test_a_rolled_back_session_leaves_neither_the_callers_data_nor_the_task(
    app_engine: Engine, database: Database, database_url: str, wakeups: list[int]
) -> None:
    with Session(app_engine) as session:
        session.execute(orders.insert().values(item="pen"))
        enqueue(SUCCEED, session=session, database_url=database_url)
        enqueue_many([TaskSpec(SUCCEED)] * 3, session=session, database_url=database_url)
        enqueue_steps([{"handler": SUCCEED}], session=session, database_url=database_url)
        session.rollback()
        session.commit()  # a later commit does not run the dropped wake-ups
    assert wakeups == []
    assert app_orders(app_engine) == []
    assert (count(database, TaskQueue), count(database, TaskRun)) == (0, 0)


def test_enqueue_on_a_connection_joins_its_transaction(
    app_engine: Engine, database: Database, database_url: str
) -> None:
    def fail_after_enqueueing() -> None:
        with app_engine.begin() as connection:
            connection.execute(orders.insert().values(item="lamp"))
            enqueue_many([TaskSpec(SUCCEED)] * 2, connection=connection, database_url=database_url)
            raise RuntimeError("the application fails after enqueueing")

    with pytest.raises(RuntimeError):
        fail_after_enqueueing()
    assert (count(database, TaskQueue), app_orders(app_engine)) == (0, [])
    with app_engine.begin() as connection:
        ids = enqueue_many(
            [TaskSpec(SUCCEED)] * 2, connection=connection, database_url=database_url
        )
    assert [task_row(database, task_id).last_status for task_id in ids] == [RunStatus.SCHEDULED] * 2


def test_joining_refuses_what_is_not_a_session_or_connection(database_url: str) -> None:
    with pytest.raises(InvalidArgumentError, match="session must be an SQLAlchemy Session"):
        enqueue(SUCCEED, session="db", database_url=database_url)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="connection must be an SQLAlchemy Connection"):
        enqueue(SUCCEED, connection=object(), database_url=database_url)  # type: ignore[arg-type]
