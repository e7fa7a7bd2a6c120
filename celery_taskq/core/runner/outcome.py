"""A run's outcome: what the runner records when a handler ends, made storable first.

Refused by the database, an outcome would leave its run ``running`` for ever (DESIGN §6).
:func:`storable_outcome` cleans every text and JSON value of an outcome and turns a result
that is too large into an ``error`` that says so; :func:`refused_outcome` is what is recorded
when the database refuses an outcome all the same.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from celery_taskq.core.models import RunStatus
from celery_taskq.core.runner.outcome_values import (
    ERROR_CODE_MAX_LENGTH,
    ERROR_MESSAGE_MAX_LENGTH,
    cut_text,
    describe_exception,
    json_size,
    storable_json,
    storable_text,
)

REFUSED_CODE = "outcome_refused"
"""``ErrorCode`` of a run whose outcome the database refused even once cleaned."""

RESULT_TOO_LARGE_CODE = "result_too_large"
"""``ErrorCode`` of a run whose result is larger than ``TASKQ_RESULT_MAX_BYTES``."""


@dataclass(frozen=True)
class RunOutcome:
    """The final state of a run, as the runner determined it."""

    status: RunStatus
    standard_output: str
    error_output: str
    results: Any = None
    error_code: str | None = None
    error_message: str | None = None
    percents_completed: int | None = None
    checkpoint: Any = None
    """Stored in ``Checkpoint`` when not ``None``."""
    continues: bool = False
    """The handler returned ``Continue``: the task gets its next run at once."""
    replaces_task_data: bool = False
    """``change_data_on_error`` gave new data: ``task_data`` replaces ``TaskData``."""
    task_data: Any = None


def _json_needs_cleaning(document: Any) -> bool:
    text = json.dumps(document, ensure_ascii=False)
    if "\\u0000" in text:
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _clean_json(document: Any) -> Any:
    if document is None or not _json_needs_cleaning(document):
        return document
    try:
        return storable_json(document)
    except RecursionError:  # nested deeper than can be walked: not storable as it is
        return None


def storable_outcome(outcome: RunOutcome, result_max_bytes: int) -> RunOutcome:
    """``outcome`` with every text and JSON value storable, and a result over
    ``result_max_bytes`` (as JSON) replaced by an ``error`` that says so."""
    status, results = outcome.status, outcome.results
    error_code, error_message = outcome.error_code, outcome.error_message
    error_output = outcome.error_output
    if results is not None:
        size = json_size(results)
        if size > result_max_bytes:
            note = (
                f"the run's result is {size} bytes as JSON, more than the "
                f"{result_max_bytes} bytes a result may have (TASKQ_RESULT_MAX_BYTES)"
            )
            if status is RunStatus.SUCCESS:
                status, error_code, error_message = RunStatus.ERROR, RESULT_TOO_LARGE_CODE, note
            error_output += f"[celery_taskq: {note}; the result was not stored]\n"
            results = None
    return dataclasses.replace(
        outcome,
        status=status,
        standard_output=storable_text(outcome.standard_output),
        error_output=storable_text(error_output),
        results=_clean_json(results),
        error_code=None if error_code is None else cut_text(str(error_code), ERROR_CODE_MAX_LENGTH),
        error_message=(
            None if error_message is None else cut_text(error_message, ERROR_MESSAGE_MAX_LENGTH)
        ),
        checkpoint=_clean_json(outcome.checkpoint),
        task_data=_clean_json(outcome.task_data),
        continues=outcome.continues and status is RunStatus.SUCCESS,
    )


def refused_outcome(outcome: RunOutcome, refusal: BaseException) -> RunOutcome:
    """What is recorded of a run whose outcome the database refused, cleaned as it was: an
    ``error`` with :data:`REFUSED_CODE`, the database's reason, and the output kept."""
    reason = cut_text(describe_exception(refusal), ERROR_MESSAGE_MAX_LENGTH // 2)
    return RunOutcome(
        status=RunStatus.ERROR,
        standard_output=outcome.standard_output,
        error_output=outcome.error_output,
        error_code=REFUSED_CODE,
        error_message=cut_text(
            f"the database refused the run's outcome ({outcome.status.value}"
            f"{'' if outcome.error_code is None else ', ' + outcome.error_code}): {reason}",
            ERROR_MESSAGE_MAX_LENGTH,
        ),
        percents_completed=outcome.percents_completed,
    )
