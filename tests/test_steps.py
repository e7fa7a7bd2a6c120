"""Multi-step tasks: order, per-step results, interrupt_on_step_fault, resume at the failed step."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert

from celery_taskq import Step, TaskSpec
from celery_taskq.core.context import Progress, RunContext
from celery_taskq.core.exceptions import (
    HandlerNotAllowedError,
    InvalidTaskDataError,
    InvalidTaskError,
)
from celery_taskq.core.handlers import TaskCancelledError
from celery_taskq.core.loading import create_task_handler
from celery_taskq.core.models import RunStatus, TaskQueue
from celery_taskq.core.queue import TaskQueueService
from celery_taskq.core.settings import Settings
from celery_taskq.core.steps import (
    NESTED_STEPS_CODE,
    NESTED_STEPS_MESSAGE,
    STEPS_HANDLER,
    MultiStepTask,
)
from celery_taskq.core.storage.database import Database
from tests.conftest import FakeClock
from tests.helpers import count, drive, results, runs_of, task_row

RECORD = "tests.handlers.RecordStep"
SUCCEED_STEP = "tests.handlers.Succeed"


def step(log: Path, name: str, **options: Any) -> Step:
    settings = {"name": name, "log": str(log)}
    for key in ("fail", "fail_once"):
        if key in options:
            settings[key] = options.pop(key)
    return Step(RECORD, settings, title=f"step {name}", **options)


def ran(log: Path) -> list[str]:
    return log.read_text().split() if log.exists() else []


def test_steps_run_in_order_and_each_is_reported(
    service: TaskQueueService, database: Database, tmp_path: Path
) -> None:
    log = tmp_path / "log"
    task_id = service.add_steps_task([step(log, "a"), step(log, "b"), step(log, "c")])
    assert task_row(database, task_id).task_handler_class == STEPS_HANDLER
    drive(service)
    assert ran(log) == ["a", "b", "c"]
    (run,) = runs_of(database, task_id)
    assert run.status is RunStatus.SUCCESS
    assert [s["status"] for s in results(run)["steps"]] == ["success"] * 3
    assert [s["result"] for s in results(run)["steps"]] == [{"name": n} for n in "abc"]
    assert results(run)["failed_steps"] == []
    assert (run.percents_completed, run.progress_step, run.progress_steps) == (100, 3, 3)
    assert run.standard_output is not None
    assert "== step 2/3: step b ==\nstep b ran\n" in run.standard_output


def test_a_failing_step_with_interrupt_ends_the_task_and_the_retry_resumes_there(
    service: TaskQueueService, database: Database, tmp_path: Path
) -> None:
    log = tmp_path / "log"
    steps = [
        step(log, "a"),
        step(log, "b", fail_once=str(tmp_path / "b-failed"), interrupt_on_step_fault=True),
        step(log, "c"),
    ]
    task_id = service.add_steps_task(steps, max_retries=3)
    drive(service)
    (failed,) = runs_of(database, task_id)
    assert (failed.status, failed.error_code) == (RunStatus.ERROR, "E_ONCE")
    assert failed.error_message == "step 2 of 3 (step b) failed: b failed once"
    assert [s["status"] for s in results(failed)["steps"]] == ["success", "error", "not_run"]
    assert results(failed)["failed_steps"] == [2]
    assert ran(log) == ["a", "b"]  # c did not run
    # The retry skips the step that succeeded and starts at the failed one.
    drive(service)
    failed, retried = runs_of(database, task_id)
    assert retried.status is RunStatus.SUCCESS
    assert ran(log) == ["a", "b", "b", "c"]
    records = results(retried)["steps"]
    assert [s["status"] for s in records] == ["success"] * 3
    assert [s["run_id"] for s in records] == [failed.id, retried.id, retried.id]


def test_a_failing_step_without_interrupt_is_reported_and_the_task_goes_on(
    service: TaskQueueService, database: Database, tmp_path: Path
) -> None:
    log = tmp_path / "log"
    task_id = service.add_steps_task([step(log, "a"), step(log, "b", fail=True), step(log, "c")])
    drive(service)
    (run,) = runs_of(database, task_id)
    assert run.status is RunStatus.SUCCESS
    assert ran(log) == ["a", "b", "c"]
    assert results(run)["failed_steps"] == [2]
    assert results(run)["steps"][1] | {"run_id": None} == {
        "step": 2,
        "title": "step b",
        "handler": RECORD,
        "status": "error",
        "result": None,
        "error_code": "E_STEP",
        "error_message": "b refused",
        "run_id": None,
    }


def test_steps_are_checked_before_anything_is_written(
    service: TaskQueueService, database: Database, tmp_path: Path
) -> None:
    log = tmp_path / "log"
    refusals: list[tuple[Any, str]] = [
        ([], "at least one step"),
        ("not a list", "steps must be a list"),
        ([{"settings": {}}], "step 1 needs a 'handler'"),
        ([{"handler": RECORD, "colour": "red"}], "step 1 has unknown keys: colour"),
        ([{"handler": RECORD, "interrupt_on_step_fault": "yes"}], "true or false"),
        ([step(log, "a"), Step("tests.nowhere.Gone")], "no module named 'tests.nowhere'"),
        ([step(log, "a"), Step(RECORD, {"name": "no log"})], "step 2 .*settings refused"),
    ]
    for steps, message in refusals:
        with pytest.raises(InvalidTaskError, match=message):
            service.add_steps_task(steps)
    assert count(database, TaskQueue) == 0


def test_steps_enqueued_by_the_plain_name_are_checked_too(
    service: TaskQueueService, database: Database, tmp_path: Path
) -> None:
    bad_step = {"steps": [{"handler": "tests.nowhere.Gone"}]}
    with pytest.raises(InvalidTaskError, match=r"step 1: .*no module named 'tests\.nowhere'"):
        service.add_task(STEPS_HANDLER, bad_step)
    with pytest.raises(InvalidTaskError, match=r"task 1: step 1: .*no module named"):
        service.add_tasks([TaskSpec(SUCCEED_STEP), TaskSpec(STEPS_HANDLER, bad_step)])
    refused_settings = {"steps": [{"handler": RECORD, "settings": {"name": "no log"}}]}
    with pytest.raises(InvalidTaskError, match=r"step 1 .*settings refused"):
        service.add_task(STEPS_HANDLER, refused_settings)
    assert count(database, TaskQueue) == 0
    good = {"steps": [step(tmp_path / "log", "a").as_data()]}
    assert service.add_task(STEPS_HANDLER, good) > 0


def test_the_allow_list_applies_to_every_step(
    database: Database, settings: Settings, clock: FakeClock, tmp_path: Path
) -> None:
    allowed = (STEPS_HANDLER, "tests.handlers.RecordStep")
    strict = TaskQueueService(
        database, replace(settings, allowed_handler_prefixes=allowed), clock=clock
    )
    log = tmp_path / "log"
    with pytest.raises(HandlerNotAllowedError):
        strict.add_steps_task([step(log, "a"), Step("tests.handlers.Talk")])
    assert count(database, TaskQueue) == 0
    # A step list written without the checks (as by hand) is refused step by step at run time.
    loose = TaskQueueService(database, settings, clock=clock)
    task_id = loose.add_steps_task([step(log, "a"), Step("tests.handlers.Talk")])
    drive(strict)
    (run,) = runs_of(database, task_id)
    assert results(run)["steps"][1]["error_code"] == "HandlerNotAllowedError"
    assert "talking" not in (run.standard_output or "")


# -- in-process checks of the step runner (no database) ----------------------------------------


def context(data: Any, written: list[Progress], *, cancelled: bool = False) -> RunContext:
    ticks = iter(range(0, 10_000, 10))  # every progress call is past the throttle interval
    return RunContext(
        run_id=1,
        task_queue_id=1,
        handler=STEPS_HANDLER,
        data=data,
        write_progress=written.append,
        is_cancelled=lambda: cancelled,
        monotonic=lambda: float(next(ticks)),
        store_checkpoint=lambda _value: None,
        create_handler=create_task_handler,
    )


def test_progress_is_steps_done_over_steps(tmp_path: Path) -> None:
    log = tmp_path / "log"
    written: list[Progress] = []
    steps = [step(log, "a").as_data(), step(log, "b").as_data()]
    MultiStepTask().handle_task_run(context({"steps": steps}, written))
    # Each RecordStep reports 50% of its own step.
    assert [(p.percent, p.step, p.steps) for p in written] == [
        (0, 0, 2),
        (25, 0, 2),
        (50, 1, 2),
        (75, 1, 2),
        (100, 2, 2),
    ]
    assert written[1].status == "step a"


def test_a_cancelled_task_stops_between_steps(tmp_path: Path) -> None:
    log = tmp_path / "log"
    steps = [step(log, "a").as_data(), step(log, "b").as_data()]
    with pytest.raises(TaskCancelledError):
        MultiStepTask().handle_task_run(context({"steps": steps}, [], cancelled=True))
    assert ran(log) == []


# -- steps do not nest ------------------------------------------------------------------------

NESTED_REFUSAL = r"step 2 \(.*\): a step cannot itself be a multi-step task \(taskq\.steps\)"


@pytest.mark.parametrize("inner", [STEPS_HANDLER, "celery_taskq.core.steps.MultiStepTask"])
def test_a_step_that_is_itself_a_multi_step_task_is_refused_at_enqueue(
    service: TaskQueueService, database: Database, tmp_path: Path, inner: str
) -> None:
    # Given inner steps that would each be refused on their own, and ones that would not
    log = tmp_path / "log"
    for inner_steps in (
        [{"handler": "tests.nowhere.Gone"}],
        [{"handler": RECORD, "settings": {"name": "no log"}}],
        [step(log, "inner").as_data()],
    ):
        nested = {
            "steps": [
                step(log, "a").as_data(),
                {"handler": inner, "settings": {"steps": inner_steps}},
            ]
        }
        # When the nested list is enqueued by any path, Then it is refused, whatever is inside
        with pytest.raises(InvalidTaskDataError, match=NESTED_REFUSAL):
            service.add_task(STEPS_HANDLER, nested)
        with pytest.raises(InvalidTaskDataError, match=NESTED_REFUSAL):
            service.add_steps_task(nested["steps"])
        with pytest.raises(InvalidTaskDataError, match=rf"task 1: {NESTED_REFUSAL}"):
            service.add_tasks([TaskSpec(SUCCEED_STEP), TaskSpec(STEPS_HANDLER, nested)])
    assert count(database, TaskQueue) == 0
    assert ran(log) == []


def test_a_nested_step_written_by_hand_ends_error_without_running(
    service: TaskQueueService, database: Database, clock: FakeClock, tmp_path: Path
) -> None:
    # Given a nested step list written without the checks (as a user's SQL could)
    log = tmp_path / "log"
    inner = {"steps": [step(log, "inner").as_data()]}
    data = {
        "steps": [
            step(log, "a").as_data(),
            Step(STEPS_HANDLER, inner, interrupt_on_step_fault=True).as_data(),
            step(log, "c").as_data(),
        ]
    }
    with database.transaction() as connection:
        task_id = connection.execute(
            insert(TaskQueue)
            .values(
                task_handler_class=STEPS_HANDLER,
                task_data=data,
                scheduled_on=clock.now,
                queued_on=clock.now,
                max_retries=1,
                task_runs_failed=0,
            )
            .returning(TaskQueue.id)
        ).scalar_one()
    # When it runs
    drive(service)
    # Then the nested step fails with its own code, and nothing inside it ran
    (run,) = runs_of(database, task_id)
    assert (run.status, run.error_code) == (RunStatus.ERROR, NESTED_STEPS_CODE)
    assert [s["status"] for s in results(run)["steps"]] == ["success", "error", "not_run"]
    assert results(run)["steps"][1]["error_message"] == NESTED_STEPS_MESSAGE
    assert ran(log) == ["a"]
