"""Schedules over HTTP: the API under ``/api/v1/schedules`` and the ``/schedules`` page.

Reads are open. Writes (add, edit, remove, pause, resume, run now) need the dashboard token,
as every write of the API does (:mod:`celery_taskq.web.auth`); the page's buttons are forms
checked like the task forms (token or session cookie with its CSRF token,
:func:`celery_taskq.web.forms.write_form`). Every write is one call of
:class:`~celery_taskq.core.schedules.ScheduleService`: a refused one writes nothing and
answers 400 with the reason (409 for a taken name, 404 for an unknown one). Task data is
shown with secrets redacted, as a task's is.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Request, Response
from fastapi.responses import RedirectResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from celery_taskq.core.exceptions import InvalidArgumentError
from celery_taskq.core.schedules import (
    DuplicateScheduleError,
    ScheduleService,
    ScheduleSnapshot,
    SlotSnapshot,
)
from celery_taskq.core.schedules_spec import DEFAULT_TIMEZONE, MAX_NAME_LENGTH, ScheduleSpec
from celery_taskq.reports.schedules import shown_schedule
from celery_taskq.web.api_routes import API_PATH, WRITE_ERRORS
from celery_taskq.web.auth import require_api_token
from celery_taskq.web.errors import ApiError
from celery_taskq.web.forms import write_form
from celery_taskq.web.inputs import JsonBodyRoute
from celery_taskq.web.state import WebState, get_state
from celery_taskq.web.templating import render

State = Annotated[WebState, Depends(get_state)]
Name = Annotated[str, Path(min_length=1, max_length=MAX_NAME_LENGTH, description="Its name.")]
Policy = Literal["catch_up_once", "skip"]

router = APIRouter(prefix=API_PATH, tags=["schedules"], route_class=JsonBodyRoute)
pages = APIRouter(include_in_schema=False)

NOTICES = {
    "paused": "Schedule paused.",
    "resumed": "Schedule resumed: it fires from its next slot.",
    "run-now": "The schedule's task is queued.",
    "edited": "Schedule changed: a running beat uses it from its next tick.",
}

POLICIES = ("catch_up_once", "skip")


class SlotOut(BaseModel):
    """A slot a tick dealt with."""

    slot_on: datetime
    fired_on: datetime
    task_id: int | None = Field(description="The task it created; null when skip created none.")
    policy_applied: str | None = Field(description="The misfire policy applied, if any missed.")
    missed_slots: int
    first_missed_on: datetime | None


class ScheduleOut(BaseModel):
    """A schedule, where it stands, and (for one schedule) its latest slots."""

    name: str
    handler: str
    data: Any
    interval: int | None = Field(description="Seconds between slots, or null for a crontab.")
    crontab: str | None
    timezone: str
    misfire_policy: str
    paused: bool
    title: str | None
    max_retries: int | None
    source: str = Field(description="api, or config (rewritten from taskq_schedules at start).")
    created_on: datetime
    updated_on: datetime
    next_run_on: datetime
    last_run_on: datetime | None
    last_task_id: int | None
    last_status: str | None = Field(description="LastStatus of its last task.")
    slots: list[SlotOut] | None = None


class ScheduleIn(BaseModel):
    """A schedule to add; exactly one of ``interval`` and ``crontab``."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=MAX_NAME_LENGTH)
    handler: str = Field(min_length=1, max_length=255)
    data: Any = None
    interval: int | None = Field(default=None, ge=1, description="Seconds between slots.")
    crontab: str | None = Field(default=None, max_length=255, description="Five fields.")
    timezone: str = Field(default=DEFAULT_TIMEZONE, max_length=64)
    misfire_policy: Policy = "catch_up_once"
    title: str | None = Field(default=None, max_length=255)
    max_retries: int | None = Field(default=None, ge=1)
    paused: bool = False


class ScheduleEditIn(BaseModel):
    """The parts of a schedule to change; ``interval`` replaces a crontab and the other way."""

    model_config = ConfigDict(extra="forbid")

    handler: str | None = Field(default=None, min_length=1, max_length=255)
    data: Any = None
    interval: int | None = Field(default=None, ge=1)
    crontab: str | None = Field(default=None, max_length=255)
    timezone: str | None = Field(default=None, max_length=64)
    misfire_policy: Policy | None = None
    title: str | None = Field(default=None, max_length=255)
    max_retries: int | None = Field(default=None, ge=1)


class RunNowOut(BaseModel):
    """The task a run-now queued."""

    task_id: int


def _service(state: WebState) -> ScheduleService:
    return ScheduleService(state.service.database, state.settings)


def _out(
    state: WebState, snapshot: ScheduleSnapshot, slots: list[SlotSnapshot] | None = None
) -> ScheduleOut:
    document = shown_schedule(snapshot, state.settings.redact_patterns)
    return ScheduleOut(
        **document, slots=None if slots is None else [SlotOut(**vars(slot)) for slot in slots]
    )


@router.get("/schedules", response_model=list[ScheduleOut])
def list_schedules(state: State) -> list[ScheduleOut]:
    """Every schedule by name, with its next run, last run and last status."""
    return [_out(state, snapshot) for snapshot in _service(state).list_schedules()]


@router.get("/schedules/{name}", response_model=ScheduleOut)
def get_schedule(state: State, name: Name) -> ScheduleOut:
    """One schedule with its latest 20 slots (newest first)."""
    service = _service(state)
    return _out(state, service.get(name), service.slots(name))


@router.post(
    "/schedules",
    status_code=201,
    response_model=ScheduleOut,
    responses=WRITE_ERRORS,
    dependencies=[Depends(require_api_token)],
)
def add_schedule(state: State, body: ScheduleIn) -> ScheduleOut:
    """Add a schedule (201); a taken name answers 409, a bad part 400, and nothing is written."""
    values = body.model_dump(exclude={"paused"})
    spec = ScheduleSpec(**values)
    try:
        return _out(state, _service(state).add(spec, paused=body.paused))
    except DuplicateScheduleError as exc:
        raise ApiError(409, str(exc)) from exc


@router.patch(
    "/schedules/{name}",
    response_model=ScheduleOut,
    responses=WRITE_ERRORS,
    dependencies=[Depends(require_api_token)],
)
def edit_schedule(state: State, name: Name, body: ScheduleEditIn) -> ScheduleOut:
    """Change the parts given; a running beat uses them from its next tick."""
    changes = body.model_dump(exclude_unset=True)
    if not changes:
        raise ApiError(400, "give at least one part to change")
    return _out(state, _service(state).edit(name, changes))


@router.delete(
    "/schedules/{name}",
    status_code=204,
    responses=WRITE_ERRORS,
    dependencies=[Depends(require_api_token)],
)
def remove_schedule(state: State, name: Name) -> Response:
    """Remove a schedule and its slot rows; the tasks it created stay."""
    _service(state).remove(name)
    return Response(status_code=204)


@router.post(
    "/schedules/{name}/pause",
    response_model=ScheduleOut,
    responses=WRITE_ERRORS,
    dependencies=[Depends(require_api_token)],
)
def pause_schedule(state: State, name: Name) -> ScheduleOut:
    """Stop the schedule firing until it is resumed."""
    return _out(state, _service(state).pause(name))


@router.post(
    "/schedules/{name}/resume",
    response_model=ScheduleOut,
    responses=WRITE_ERRORS,
    dependencies=[Depends(require_api_token)],
)
def resume_schedule(state: State, name: Name) -> ScheduleOut:
    """Let the schedule fire again, from its first slot after now."""
    return _out(state, _service(state).resume(name))


@router.post(
    "/schedules/{name}/run-now",
    status_code=201,
    response_model=RunNowOut,
    responses=WRITE_ERRORS,
    dependencies=[Depends(require_api_token)],
)
def run_schedule_now(state: State, name: Name) -> RunNowOut:
    """Queue the schedule's task now, outside its slots (201)."""
    return RunNowOut(task_id=_service(state).run_now(name))


@pages.get("/schedules")
def schedules_page(request: Request, state: State, done: str | None = None) -> Response:
    """Every schedule, with pause, resume and run-now buttons when writes are enabled."""
    snapshots = _service(state).list_schedules()
    return render(
        request,
        "schedules.html",
        {
            "schedules": [{**vars(snapshot), "timing": snapshot.timing} for snapshot in snapshots],
            "notice": NOTICES.get(done or ""),
        },
    )


@pages.post("/schedules/{name}/edit")
async def schedule_edit_form(request: Request, state: State, name: Name) -> Response:
    """Change a schedule's timing or misfire policy from the page; redirect back to it."""
    form = await write_form(request, state)
    changes = timing_changes(form)
    await run_in_threadpool(_service(state).edit, name, changes)
    return RedirectResponse("/schedules?done=edited", status_code=303)


def timing_changes(form: dict[str, str]) -> dict[str, Any]:
    """The changes the page's edit form asks for: an interval or a crontab, a timezone, a
    misfire policy (blank fields change nothing); refused with what is wrong."""
    fields = {key: form.get(key, "").strip() for key in ("interval", "crontab", "timezone")}
    policy = form.get("misfire_policy", "").strip()
    if fields["interval"] and fields["crontab"]:
        raise InvalidArgumentError("give an interval or a crontab, not both")
    changes: dict[str, Any] = {}
    if fields["interval"]:
        if not fields["interval"].isdecimal() or int(fields["interval"]) < 1:
            raise InvalidArgumentError(
                f"interval must be a whole number of seconds, at least 1: {fields['interval']!r}"
            )
        changes["interval"] = int(fields["interval"])
    if fields["crontab"]:
        changes["crontab"] = fields["crontab"]
    if fields["timezone"]:
        changes["timezone"] = fields["timezone"]
    if policy:
        if policy not in POLICIES:
            raise InvalidArgumentError(f"misfire policy must be one of {', '.join(POLICIES)}")
        changes["misfire_policy"] = policy
    if not changes:
        raise InvalidArgumentError("give at least one part to change")
    return changes


@pages.post("/schedules/{name}/{action}")
async def schedule_form(
    request: Request,
    state: State,
    name: Name,
    action: Annotated[str, Path(pattern="^(pause|resume|run-now)$")],
) -> Response:
    """Pause, resume or run a schedule now from the page; redirect back to it."""
    await write_form(request, state)
    service = _service(state)
    operation = {"pause": service.pause, "resume": service.resume, "run-now": service.run_now}
    await run_in_threadpool(operation[action], name)
    done = {"pause": "paused", "resume": "resumed", "run-now": "run-now"}[action]
    return RedirectResponse(f"/schedules?done={done}", status_code=303)
