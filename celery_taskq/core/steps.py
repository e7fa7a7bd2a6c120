"""Multi-step tasks (AbanteCart's tasks and steps): ordered steps, each a handler with its own
settings, in one task.

.. code-block:: python

    enqueue_steps([
        Step("backup.DumpTables", {"tables": ["users"]}, interrupt_on_step_fault=True),
        Step("backup.Compress", {"level": 9}),
    ], title="nightly backup")

The task is a TaskQueue row of the built-in handler ``taskq.steps`` whose data lists the steps.
Steps run in order in one run, each seeing its settings as ``run.data``. Progress is steps done
over steps. Each step's status, result and error are kept in the run's ``Results``:

.. code-block:: json

    {"steps": [{"step": 1, "title": "...", "handler": "...", "status": "success",
                "result": {...}, "error_code": null, "error_message": null, "run_id": 7}],
     "failed_steps": [2]}

A failing step with ``interrupt_on_step_fault`` ends the run ``error`` (its code and message
are the step's); the steps after it do not run, and the task's retry starts at the failed step:
steps that succeeded are not run again, because each finished step is saved as the run's
checkpoint. A failing step without the flag is reported in ``failed_steps`` and the task goes on.

Steps do not nest: a step whose handler is itself a multi-step task is refused at enqueue, and
ends ``error`` with code ``E_NESTED_STEPS`` if it reaches a run anyway (a row written by hand).
Nesting would add nothing a flat list cannot say, and an inner list could neither resume at its
failed step nor be checked like the outer one; list the inner steps in the outer list instead.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from celery_taskq.core.context import Progress, RunContext
from celery_taskq.core.exceptions import InvalidTaskDataError, InvalidTaskError
from celery_taskq.core.handlers import Continue, TaskCancelledError, TaskError, TaskHandler
from celery_taskq.core.registry import register

STEPS_HANDLER = "taskq.steps"
"""The registered name of the built-in multi-step handler."""

MAX_STEPS = 1000
"""Most steps one task may have."""

NESTED_STEPS_CODE = "E_NESTED_STEPS"
"""The ``ErrorCode`` of a step that is itself a multi-step task."""

NESTED_STEPS_MESSAGE = (
    f"a step cannot itself be a multi-step task ({STEPS_HANDLER}): "
    "list its steps in the outer task instead"
)

STEP_SUCCESS = "success"
STEP_ERROR = "error"
STEP_NOT_RUN = "not_run"
"""A step's status in ``Results``: it ran and succeeded, it failed, or it never started."""


@dataclass(frozen=True)
class Step:
    """One step: a handler (registered name or dotted path), its settings (the step's
    ``run.data``), whether its failure stops the task, and an optional title."""

    handler: str
    settings: Any = None
    interrupt_on_step_fault: bool = False
    title: str | None = None

    def as_data(self) -> dict[str, Any]:
        """The step as stored in the task's data."""
        return {
            "handler": self.handler,
            "settings": self.settings,
            "interrupt_on_step_fault": self.interrupt_on_step_fault,
            "title": self.title,
        }


def steps_data(steps: Sequence[Step | Mapping[str, Any]]) -> dict[str, Any]:
    """The task data of a multi-step task, checked for shape."""
    if isinstance(steps, str | bytes) or not isinstance(steps, Sequence):
        raise InvalidTaskDataError("steps must be a list of Step or mappings")
    parsed = parse_steps({"steps": [_step_mapping(step) for step in steps]})
    return {"steps": [step.as_data() for step in parsed]}


def parse_steps(data: Any) -> list[Step]:
    """The steps in a multi-step task's data; :class:`InvalidTaskDataError` if malformed."""
    if not isinstance(data, Mapping) or not isinstance(data.get("steps"), list):
        raise InvalidTaskDataError('a multi-step task\'s data must be {"steps": [...]}')
    raw_steps = data["steps"]
    if not raw_steps:
        raise InvalidTaskDataError("a multi-step task needs at least one step")
    if len(raw_steps) > MAX_STEPS:
        raise InvalidTaskDataError(f"a multi-step task may have at most {MAX_STEPS} steps")
    return [_parse_step(index, raw) for index, raw in enumerate(raw_steps, start=1)]


def _step_mapping(step: Step | Mapping[str, Any]) -> Mapping[str, Any]:
    return step.as_data() if isinstance(step, Step) else step


def _parse_step(index: int, raw: Any) -> Step:
    where = f"step {index}"
    if not isinstance(raw, Mapping):
        raise InvalidTaskDataError(f"{where} must be an object with a 'handler'")
    unknown = set(raw) - {"handler", "settings", "interrupt_on_step_fault", "title"}
    if unknown:
        raise InvalidTaskDataError(f"{where} has unknown keys: {', '.join(sorted(unknown))}")
    handler = raw.get("handler")
    if not isinstance(handler, str) or not handler.strip():
        raise InvalidTaskDataError(f"{where} needs a 'handler': a registered name or dotted path")
    interrupt = raw.get("interrupt_on_step_fault", False)
    if not isinstance(interrupt, bool):
        raise InvalidTaskDataError(f"{where}: 'interrupt_on_step_fault' must be true or false")
    title = raw.get("title")
    if title is not None and not isinstance(title, str):
        raise InvalidTaskDataError(f"{where}: 'title' must be text")
    return Step(handler.strip(), raw.get("settings"), interrupt, title)


def check_steps(data: Any, create_handler: Callable[[str], TaskHandler]) -> None:
    """Check a multi-step task's data before it is enqueued: its shape, and every step's
    handler (loaded by ``create_handler``, so under the allow-list) with its ``validate``.
    A step that is itself a multi-step task is refused (steps do not nest)."""
    for index, step in enumerate(parse_steps(data), start=1):
        try:
            handler = create_handler(step.handler)
        except InvalidTaskError as exc:
            raise type(exc)(f"step {index}: {exc}") from exc
        if isinstance(handler, MultiStepTask):
            raise InvalidTaskDataError(f"step {index} ({step.handler}): {NESTED_STEPS_MESSAGE}")
        try:
            handler.validate(step.settings)
        except Exception as exc:
            raise InvalidTaskError(
                f"step {index} ({step.handler}): settings refused: {exc}"
            ) from exc


@register(STEPS_HANDLER)
class MultiStepTask(TaskHandler):
    """Runs the steps in the task's data in order (see the module documentation)."""

    def validate(self, data: Any) -> None:
        """Check the shape of the step list (each step's handler and settings are checked at
        enqueue too, by :func:`check_steps`)."""
        parse_steps(data)

    def handle_task_run(self, run: RunContext) -> Any:
        """Run every step not done by an earlier run, recording each as the checkpoint."""
        steps = parse_steps(run.data)
        done_earlier = _succeeded_steps(run.checkpoint, steps)
        records: list[dict[str, Any]] = []
        for index, step in enumerate(steps, start=1):
            if index in done_earlier:
                records.append(done_earlier[index])
                continue
            run.set_progress(
                100 * (index - 1) / len(steps),
                step=index - 1,
                steps=len(steps),
                status=_label(step),
            )
            print(f"== step {index}/{len(steps)}: {_label(step)} ==", flush=True)
            record = self._run_step(run, index, step, len(steps))
            records.append(record)
            run.save_checkpoint({"steps": records})
            if record["status"] == STEP_ERROR and step.interrupt_on_step_fault:
                records.extend(_not_run(steps, index))
                raise TaskError(
                    f"step {index} of {len(steps)} ({_label(step)}) failed: "
                    f"{record['error_message']}",
                    code=record["error_code"],
                    results=_summary(records),
                )
        run.set_progress(100, step=len(steps), steps=len(steps), status="all steps done")
        return _summary(records)

    def _run_step(self, run: RunContext, index: int, step: Step, count: int) -> dict[str, Any]:
        record: dict[str, Any] = {
            "step": index,
            "title": step.title,
            "handler": step.handler,
            "status": STEP_SUCCESS,
            "result": None,
            "error_code": None,
            "error_message": None,
            "run_id": run.id,
        }
        try:
            handler = run.create_handler(step.handler)
            if isinstance(handler, MultiStepTask):
                raise TaskError(NESTED_STEPS_MESSAGE, code=NESTED_STEPS_CODE)
            result = handler.handle_task_run(_step_context(run, index, step, count))
            if isinstance(result, Continue):
                raise TaskError("a step cannot return Continue", code="E_STEP_CONTINUE")
            record["result"] = result
        except TaskCancelledError:
            raise
        except TaskError as exc:
            record.update(status=STEP_ERROR, error_code=exc.code, error_message=exc.message)
        except Exception as exc:
            traceback.print_exc()
            record.update(status=STEP_ERROR, error_code=type(exc).__name__, error_message=str(exc))
        return record


def _step_context(run: RunContext, index: int, step: Step, count: int) -> RunContext:
    """The context a step's handler sees: its settings as data, progress scaled into its step."""

    def write_progress(progress: Progress) -> None:
        run.set_progress(
            100 * (index - 1 + progress.percent / 100) / count,
            step=index - 1,
            steps=count,
            status=progress.status or _label(step),
        )

    return RunContext(
        run_id=run.id,
        task_queue_id=run.task_queue_id,
        handler=step.handler,
        data=step.settings,
        write_progress=write_progress,
        is_cancelled=lambda: run.cancel_requested,
        deadline=run.deadline,
        create_handler=run.create_handler,
    )


def _label(step: Step) -> str:
    return step.title or step.handler


def _not_run(steps: list[Step], failed_index: int) -> list[dict[str, Any]]:
    return [
        {
            "step": index,
            "title": step.title,
            "handler": step.handler,
            "status": STEP_NOT_RUN,
            "result": None,
            "error_code": None,
            "error_message": None,
            "run_id": None,
        }
        for index, step in enumerate(steps, start=1)
        if index > failed_index
    ]


def _summary(records: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "steps": records,
        "failed_steps": [r["step"] for r in records if r["status"] == STEP_ERROR],
    }


def _succeeded_steps(checkpoint: Any, steps: list[Step]) -> dict[int, dict[str, Any]]:
    """Steps an earlier run finished with success, by number, if they are still the same steps."""
    if not isinstance(checkpoint, Mapping) or not isinstance(checkpoint.get("steps"), list):
        return {}
    done: dict[int, dict[str, Any]] = {}
    for record in checkpoint["steps"]:
        if not isinstance(record, Mapping):
            continue
        index = record.get("step")
        if (
            isinstance(index, int)
            and 1 <= index <= len(steps)
            and record.get("status") == STEP_SUCCESS
            and record.get("handler") == steps[index - 1].handler
        ):
            done[index] = dict(record)
    return done
