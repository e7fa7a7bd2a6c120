"""The handler registry: registered names, the allow-list over them, and TASKQ_IMPORTS."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import replace

import pytest

from celery_taskq import TaskHandler, register
from celery_taskq.core.exceptions import (
    ConfigurationError,
    HandlerError,
    HandlerModuleNotFoundError,
    HandlerNotAllowedError,
    InvalidTaskError,
)
from celery_taskq.core.loading import load_handler_class
from celery_taskq.core.models import RunStatus, TaskQueue
from celery_taskq.core.queue import TaskQueueService
from celery_taskq.core.registry import registered_names, unregister
from celery_taskq.core.settings import Settings
from celery_taskq.core.storage.database import Database
from tests import registered
from tests.conftest import CLI, FakeClock
from tests.helpers import count, drive, insert_task_row, runs_of, task_row


@pytest.fixture
def scratch_name() -> Iterator[str]:
    """A name free for the test to register, forgotten afterwards."""
    name = "tests.scratch.handler"
    yield name
    unregister(name)


def test_a_registered_name_loads_its_class() -> None:
    assert load_handler_class("tests.reports.send") is registered.SendReport
    assert load_handler_class("send-greeting") is registered.SendGreeting
    assert {"tests.reports.send", "send-greeting", "taskq.steps"} <= set(registered_names())


def test_registering_checks_the_name_and_the_class(scratch_name: str) -> None:
    for bad in ["", "has space", "1starts.with.digit", "trailing.", "a" * 300]:
        with pytest.raises(HandlerError, match=r"not valid|longer than"):
            register(bad)
    with pytest.raises(HandlerError, match=r"subclass of celery_taskq\.TaskHandler"):
        register(scratch_name)(object)  # type: ignore[type-var]


def test_a_name_is_taken_once(scratch_name: str) -> None:
    class First(TaskHandler):
        pass

    class Second(TaskHandler):
        pass

    register(scratch_name)(First)
    register(scratch_name)(First)  # the same class again (a module imported twice) is harmless
    with pytest.raises(HandlerError, match="already registered"):
        register(scratch_name)(Second)
    assert load_handler_class(scratch_name) is First


def test_an_unknown_name_says_how_names_become_known() -> None:
    with pytest.raises(HandlerError, match="neither a registered name nor a dotted path"):
        load_handler_class("unknown-name")
    with pytest.raises(HandlerModuleNotFoundError, match="TASKQ_IMPORTS"):
        load_handler_class("tests.nowhere.send")


def test_enqueue_by_name_stores_the_name_and_runs_its_class(
    service: TaskQueueService, database: Database
) -> None:
    task_id = service.add_task("tests.reports.send", {"to": "ops@example.com"})
    assert task_row(database, task_id).task_handler_class == "tests.reports.send"
    drive(service)
    (run,) = runs_of(database, task_id)
    assert (run.status, run.results) == (RunStatus.SUCCESS, {"sent_to": "ops@example.com"})
    assert run.standard_output == "report sent to ops@example.com\n"


def test_a_registered_handler_validates_before_enqueue(
    service: TaskQueueService, database: Database
) -> None:
    with pytest.raises(InvalidTaskError, match='a report needs "to"'):
        service.add_task("tests.reports.send", {"cc": "x"})
    assert count(database, TaskQueue) == 0


def test_allow_list_admits_names_under_it_and_nothing_else(
    database: Database, settings: Settings, clock: FakeClock
) -> None:
    strict = TaskQueueService(
        database, replace(settings, allowed_handler_prefixes=("tests.reports",)), clock=clock
    )
    allowed = strict.add_task("tests.reports.send", {"to": "a@b.c"})
    for refused in ("send-greeting", "tests.handlers.Succeed", "tests.reports_old.Send"):
        with pytest.raises(HandlerNotAllowedError, match="not allowed"):
            strict.add_task(refused)
    assert count(database, TaskQueue) == 1
    # Rows written by hand, bypassing enqueue, are refused by the runner too.
    by_name = insert_task_row(database, "send-greeting", clock())
    by_path = insert_task_row(database, "tests.handlers.Talk", clock())
    drive(strict)
    assert runs_of(database, allowed)[0].status is RunStatus.SUCCESS
    for task_id in (by_name, by_path):
        (run,) = runs_of(database, task_id)
        assert (run.status, run.error_code) == (RunStatus.ERROR, "HandlerNotAllowedError")
        assert run.standard_output == ""  # the handler never ran


def test_imports_setting_makes_names_known_in_another_process(
    service: TaskQueueService, database: Database, subprocess_env: dict[str, str]
) -> None:
    task_id = service.add_task("tests.reports.send", {"to": "a@b.c"})
    service.create_missing_task_runs()
    # A runner process that does not import the registering module cannot run the task ...
    without = subprocess.run(
        [*CLI, "runner", "--burst"], env=subprocess_env, capture_output=True, text=True
    )
    assert without.returncode == 0, without.stderr
    (failed,) = runs_of(database, task_id)
    assert failed.status is RunStatus.ERROR
    assert failed.error_code == "HandlerModuleNotFoundError"
    assert "TASKQ_IMPORTS" in str(failed.error_message)
    # ... and one started with TASKQ_IMPORTS can.
    service.retry_task(task_id)
    env = {**subprocess_env, "TASKQ_IMPORTS": "tests.registered"}
    with_imports = subprocess.run(
        [*CLI, "runner", "--burst"], env=env, capture_output=True, text=True
    )
    assert with_imports.returncode == 0, with_imports.stderr
    assert [run.status for run in runs_of(database, task_id)] == [
        RunStatus.ERROR,
        RunStatus.SUCCESS,
    ]


def test_cli_enqueues_by_name_with_imports(
    database: Database, subprocess_env: dict[str, str]
) -> None:
    args = [*CLI, "enqueue", "send-greeting", '{"name": "Ada"}']
    refused = subprocess.run(args, env=subprocess_env, capture_output=True, text=True)
    assert refused.returncode == 1
    assert refused.stderr.count("\n") == 1
    assert "Traceback" not in refused.stderr
    assert "registered name" in refused.stderr
    env = {**subprocess_env, "TASKQ_IMPORTS": "tests.registered"}
    queued = subprocess.run(args, env=env, capture_output=True, text=True)
    assert queued.returncode == 0, queued.stderr
    assert count(database, TaskQueue) == 1


def test_a_module_in_imports_that_fails_is_a_clear_configuration_error(
    database: Database, settings: Settings
) -> None:
    with pytest.raises(ConfigurationError, match=r"imports: module 'tests\.nowhere' failed"):
        TaskQueueService(database, replace(settings, imports=("tests.nowhere",)))


def test_imports_setting_is_read_from_the_environment() -> None:
    environ = {"TASKQ_IMPORTS": "myapp.tasks, reports"}
    assert Settings.resolve(environ=environ).imports == ("myapp.tasks", "reports")
