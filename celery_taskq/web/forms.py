"""The dashboard's HTML forms: enqueue, cancel, retry, re-send, sign in and out.

Each write is checked by :func:`write_form` before anything in it is used: 403 when writes are
disabled or the form comes from another origin (both before its body is read), then the token
field, or the session cookie with its CSRF token (:mod:`celery_taskq.web.csrf`): 401 without
either, 403 when the CSRF checks fail. The body itself is capped by
:class:`celery_taskq.web.body_limit.BodyLimitMiddleware`. Success redirects (303) to the task's
page with a fixed notice.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any
from urllib.parse import parse_qsl

from fastapi import APIRouter, Depends, Path, Request
from fastapi.responses import RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from celery_taskq.core.exceptions import (
    ConfigurationError,
    DuplicateTaskError,
    InvalidArgumentError,
    PublishError,
)
from celery_taskq.core.storage.decoding import loads_json
from celery_taskq.web import inputs
from celery_taskq.web.auth import SESSION_COOKIE, WRITES_DISABLED, new_session, token_matches
from celery_taskq.web.csrf import check_form_credentials, check_origin
from celery_taskq.web.errors import ApiError
from celery_taskq.web.inputs import MAX_ID
from celery_taskq.web.state import WebState, get_state
from celery_taskq.web.templating import render

State = Annotated[WebState, Depends(get_state)]
TaskId = Annotated[int, Path(ge=1, le=MAX_ID)]

router = APIRouter(include_in_schema=False)


async def read_form(request: Request) -> dict[str, str]:
    """An ``application/x-www-form-urlencoded`` body (the last value of each field)."""
    body = await request.body()
    return dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))


async def write_form(request: Request, state: WebState) -> dict[str, str]:
    """The fields of a form that may write; refused (403, 401) otherwise, nothing written."""
    if not state.writes_enabled:
        raise ApiError(403, WRITES_DISABLED)
    origin_vouched = check_origin(request)
    form = await read_form(request)
    check_form_credentials(request, state, form, origin_vouched=origin_vouched)
    return form


def _redirect(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


def _enqueue_arguments(form: dict[str, str]) -> dict[str, Any]:
    handler = inputs.optional_text(form.get("handler"), "handler")
    if handler is None:
        raise InvalidArgumentError("handler is required")
    data_text = form.get("data", "").strip()
    try:
        data = loads_json(data_text) if data_text else None
    except ValueError as exc:
        raise InvalidArgumentError(f"data is not valid JSON: {exc}") from None
    problem = inputs.json_problem(data)
    if problem is not None:
        raise InvalidArgumentError(f"data {problem}")
    scheduled_on: datetime | None = None
    scheduled_text = inputs.optional_text(form.get("scheduled_on"), "scheduled_on")
    if scheduled_text is not None:
        try:
            scheduled_on = datetime.fromisoformat(scheduled_text)
            if scheduled_on.tzinfo is not None:
                scheduled_on.astimezone(UTC)
        except (ValueError, OverflowError):
            raise InvalidArgumentError(
                f"scheduled_on {scheduled_text!r} is not an ISO 8601 time in range"
            ) from None
    max_retries_text = form.get("max_retries", "").strip()
    max_retries = None
    if max_retries_text:
        if not max_retries_text.isdigit() or not 1 <= int(max_retries_text) <= 2**31 - 1:
            raise InvalidArgumentError("max_retries must be a whole number of 1 or more")
        max_retries = int(max_retries_text)
    return {
        "handler_path": handler,
        "data": data,
        "scheduled_on": scheduled_on,
        "max_retries": max_retries,
        "queued_by": inputs.optional_text(form.get("queued_by"), "queued_by"),
        "title": inputs.optional_text(form.get("title"), "title"),
        "unique_key": inputs.optional_text(form.get("unique_key"), "unique_key"),
    }


@router.post("/tasks")
async def enqueue(request: Request, state: State) -> Response:
    """Queue a task from the form; redirect to it."""
    form = await write_form(request, state)
    arguments = _enqueue_arguments(form)

    def add() -> tuple[int, str]:
        try:
            task_id = state.service.add_task(**arguments, on_duplicate="raise", create_run=True)
        except DuplicateTaskError as exc:
            if exc.existing_id is None:
                raise
            return exc.existing_id, "existing"
        return task_id, "queued"

    task_id, notice = await run_in_threadpool(add)
    return _redirect(f"/tasks/{task_id}?done={notice}")


@router.post("/tasks/{task_id}/cancel")
async def cancel(request: Request, state: State, task_id: TaskId) -> Response:
    """Cancel the task; redirect back to it."""
    await write_form(request, state)
    try:
        still_running = await run_in_threadpool(state.service.cancel_task, task_id)
    except InvalidArgumentError as exc:
        raise ApiError(409, str(exc)) from exc
    return _redirect(f"/tasks/{task_id}?done={'cancelling' if still_running else 'cancelled'}")


@router.post("/tasks/{task_id}/retry")
async def retry(request: Request, state: State, task_id: TaskId) -> Response:
    """Give the task one more run; redirect back to it."""
    await write_form(request, state)
    try:
        await run_in_threadpool(state.service.retry_task, task_id)
    except InvalidArgumentError as exc:
        raise ApiError(409, str(exc)) from exc
    return _redirect(f"/tasks/{task_id}?done=retried")


@router.post("/tasks/{task_id}/resend")
async def resend(request: Request, state: State, task_id: TaskId) -> Response:
    """Publish the native task again as a new task; redirect to the new task."""
    await write_form(request, state)
    from celery_taskq.celery.resend import resend_task  # Celery only when re-sending

    try:
        resent = await run_in_threadpool(
            lambda: resend_task(state.service, state.celery_app, task_id, queued_by="dashboard")
        )
    except (InvalidArgumentError, ConfigurationError) as exc:  # not failed, or no app here
        raise ApiError(409, str(exc)) from exc
    except PublishError as exc:  # the broker: nothing was sent
        raise ApiError(503, str(exc)) from exc
    return _redirect(f"/tasks/{resent.task_id}?done=resent")


@router.post("/login")
async def login(request: Request, state: State) -> Response:
    """Check the token; on success set the session cookie (HttpOnly, SameSite=Strict)."""
    if not state.writes_enabled:
        raise ApiError(403, WRITES_DISABLED)
    check_origin(request)
    form = await read_form(request)
    if not token_matches(form.get("token"), state.settings.dashboard_token):
        return render(
            request,
            "login.html",
            {"notice": None, "error": "That is not the token."},
            status_code=401,
        )
    response = _redirect("/login?done=signed-in")
    response.set_cookie(
        SESSION_COOKIE,
        new_session(state.settings.dashboard_token),
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/",
    )
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    """Forget the session cookie (refused only when sent from another origin)."""
    check_origin(request)
    response = _redirect("/login?done=signed-out")
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
    return response
