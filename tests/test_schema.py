"""The schema: Alembic is the only way it is made, and it matches the models exactly."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect

from celery_taskq.core.storage.migrate import current_revision, schema_differences, upgrade_database

HEAD_REVISION = "0014"

DOCUMENTED_COLUMNS = {
    "TaskQueue": [
        "Id",
        "TaskHandlerClass",
        "TaskData",
        "ScheduledOn",
        "QueuedOn",
        "QueuedById",
        "LastStatus",
        "MaxRetries",
        "TaskRunsFailed",
    ],
    "TaskRuns": [
        "Id",
        "TaskQueueId",
        "StartedOn",
        "PercentsCompleted",
        "FinishedOn",
        "Results",
        "Status",
        "StandardOutput",
        "ErrorOutput",
        "ErrorCode",
        "ErrorMessage",
        "TaskRunnerId",
    ],
    "TaskRunners": ["Id", "ProcessId", "StartedOn", "FinishedOn", "Status"],
}
ADDED_RUNNER_COLUMNS = [
    "Hostname",
    "ProcessCreateTime",
    "HeartbeatOn",
    "WorkerHostname",
    "Role",
    "ProcessNamespace",
]
ADDED_NATIVE_TASK_COLUMNS = [
    "CeleryTaskId",
    "CeleryParentId",
    "CeleryRootId",
    "CeleryGroupId",
    "CeleryChordId",
    "ResentFromId",
]
ADDED_NATIVE_RUN_COLUMNS = ["Attempt", "Eager"]
ADDED_QUEUE_COLUMNS = ["Queue", "Priority"]


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)])
def empty_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'empty.db'}"
    return str(request.getfixturevalue("postgresql_empty_url"))


def test_upgrade_of_an_empty_database_matches_the_models(empty_database_url: str) -> None:
    # Given an empty database, When it is upgraded to head
    assert current_revision(empty_database_url) is None
    upgrade_database(empty_database_url)
    # Then Alembic finds no difference between the database and the models
    assert schema_differences(empty_database_url) == []
    engine = create_engine(empty_database_url)
    try:
        with engine.connect() as connection:
            inspector = inspect(connection)
            for table, columns in DOCUMENTED_COLUMNS.items():
                present = [column["name"] for column in inspector.get_columns(table)]
                assert present[: len(columns)] == columns
            runner_columns = [column["name"] for column in inspector.get_columns("TaskRunners")]
            assert runner_columns[len(DOCUMENTED_COLUMNS["TaskRunners"]) :] == ADDED_RUNNER_COLUMNS
            task_columns = [column["name"] for column in inspector.get_columns("TaskQueue")]
            added_task_columns = ADDED_NATIVE_TASK_COLUMNS + ADDED_QUEUE_COLUMNS
            assert task_columns[-len(added_task_columns) :] == added_task_columns
            run_columns = [column["name"] for column in inspector.get_columns("TaskRuns")]
            added_run_columns = ADDED_NATIVE_RUN_COLUMNS + ADDED_QUEUE_COLUMNS
            assert run_columns[-len(added_run_columns) :] == added_run_columns
            task_indexes = {index["name"] for index in inspector.get_indexes("TaskQueue")}
            assert "uq_TaskQueue_CeleryTaskId" in task_indexes
            assert "ix_TaskQueue_native_never_started" in task_indexes
            index_names = {index["name"] for index in inspector.get_indexes("TaskRuns")}
            assert "uq_TaskRuns_one_open_run_per_task" in index_names
            assert "ix_TaskRuns_scheduled" in index_names
    finally:
        engine.dispose()
    assert current_revision(empty_database_url) == HEAD_REVISION


def test_upgrade_twice_is_harmless(empty_database_url: str) -> None:
    upgrade_database(empty_database_url)
    upgrade_database(empty_database_url)
    assert current_revision(empty_database_url) == HEAD_REVISION
