"""Bulk retry and cancel: the single-task actions over a bounded selection of tasks.

Each task is changed in its own transaction by the single-task action
(:meth:`~celery_taskq.core.queue.TaskQueueService.retry_task`,
:meth:`~celery_taskq.core.queue.TaskQueueService.cancel_task`), so a task is changed wholly or
not at all: one that cannot be retried or cancelled is reported with the reason and left as it
was, and the others go on. The selection itself is checked before anything is written: at
least one task, at most :data:`MAX_BULK_TASKS`, every id a positive whole number.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum

from celery_taskq.core.exceptions import InvalidArgumentError, NotFoundError
from celery_taskq.core.queue import TaskQueueService

logger = logging.getLogger(__name__)

MAX_BULK_TASKS = 500
"""Most tasks one bulk retry or cancel may act on; a larger selection is refused whole."""

MAX_TASK_ID = 2**63 - 1
"""Largest id a selection may name (64-bit keys on both databases)."""


class BulkAction(Enum):
    """What a bulk action does to each selected task."""

    RETRY = "retry"
    CANCEL = "cancel"


@dataclass(frozen=True)
class BulkOutcome:
    """One task's outcome: ``done`` with what was done, or refused with the reason."""

    task_id: int
    done: bool
    detail: str


@dataclass(frozen=True)
class BulkReport:
    """What a bulk action did to each task, in the order of the selection."""

    action: BulkAction
    by: str
    outcomes: tuple[BulkOutcome, ...]

    @property
    def done(self) -> tuple[BulkOutcome, ...]:
        """The tasks changed."""
        return tuple(outcome for outcome in self.outcomes if outcome.done)

    @property
    def refused(self) -> tuple[BulkOutcome, ...]:
        """The tasks left as they were, each with its reason."""
        return tuple(outcome for outcome in self.outcomes if not outcome.done)


def parse_action(value: str) -> BulkAction:
    """A bulk action from its name; refused with the names allowed."""
    try:
        return BulkAction(value)
    except ValueError:
        allowed = ", ".join(action.value for action in BulkAction)
        raise InvalidArgumentError(
            f"unknown bulk action {value[:40]!r}: use one of {allowed}"
        ) from None


def check_selection(task_ids: Iterable[int | str]) -> tuple[int, ...]:
    """The selection as distinct ids in the order given; refused whole when it is empty, too
    large (more than :data:`MAX_BULK_TASKS`) or names an id that is not a positive number."""
    selected: dict[int, None] = {}
    for raw in task_ids:
        text = str(raw).strip()
        whole = text.isascii() and text.isdigit() and len(text) <= len(str(MAX_TASK_ID))
        if not whole or not 1 <= int(text) <= MAX_TASK_ID:
            raise InvalidArgumentError(
                f"task id {text[:40]!r} is not a whole number from 1 to {MAX_TASK_ID}; "
                "nothing was changed"
            )
        selected[int(text)] = None
        if len(selected) > MAX_BULK_TASKS:
            raise too_many(len(selected))
    if not selected:
        raise InvalidArgumentError("select at least one task; nothing was changed")
    return tuple(selected)


def too_many(count: int | str) -> InvalidArgumentError:
    """The refusal of a selection larger than :data:`MAX_BULK_TASKS`."""
    return InvalidArgumentError(
        f"a bulk action takes at most {MAX_BULK_TASKS} tasks, and {count} were selected: "
        "narrow the filter or select fewer; nothing was changed"
    )


def apply_bulk(
    service: TaskQueueService, action: BulkAction, task_ids: Iterable[int | str], *, by: str
) -> BulkReport:
    """Retry or cancel each selected task on its own (see the module); ``by`` names who asked.

    The selection is checked first (:func:`check_selection`): a refused selection changes
    nothing.
    """
    selection = check_selection(task_ids)
    outcomes = [_apply_one(service, action, task_id) for task_id in selection]
    report = BulkReport(action, by, tuple(outcomes))
    logger.info(
        "bulk %s by %s: %s of %s tasks changed (%s); refused: %s",
        action.value,
        by,
        len(report.done),
        len(selection),
        ", ".join(str(outcome.task_id) for outcome in report.done) or "none",
        "; ".join(f"{outcome.task_id}: {outcome.detail}" for outcome in report.refused) or "none",
        extra={
            "action": f"tasks_bulk_{action.value}",
            "by": by,
            "task_ids": [outcome.task_id for outcome in report.done],
            "refused_ids": [outcome.task_id for outcome in report.refused],
        },
    )
    return report


def _apply_one(service: TaskQueueService, action: BulkAction, task_id: int) -> BulkOutcome:
    try:
        if action is BulkAction.RETRY:
            run_id = service.retry_task(task_id)
            return BulkOutcome(task_id, True, f"run {run_id} created")
        still_running = service.cancel_task(task_id)
    except (InvalidArgumentError, NotFoundError) as exc:
        return BulkOutcome(task_id, False, str(exc))
    detail = "cancelled; its running run is asked to stop" if still_running else "cancelled"
    return BulkOutcome(task_id, True, detail)
