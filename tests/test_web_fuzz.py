"""Schemathesis fuzzes the published OpenAPI schema against the app, in-process (ASGI).

Positive cases (bodies and parameters that fit the schema) and negative ones (that do not),
with and without the token, on SQLite and PostgreSQL. Whatever comes in: never a 5xx, and every
4xx is JSON with a non-empty ``"error"`` message. Bounded: a fixed number of examples per mode.
"""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from schemathesis import GenerationMode

from celery_taskq.core.queue import TaskQueueService
from celery_taskq.core.settings import Settings
from celery_taskq.web import create_app
from tests.helpers import drive
from tests.web_support import TOKEN, web_settings

EXAMPLES = 60
"""Examples per generation mode and token setting (each one is one request)."""


def check_response(case: Any, response: Any) -> None:
    """No server error; a client error is JSON with a clear message."""
    where = f"{case.method} {case.formatted_path} query={case.query} body={case.body!r}"
    assert response.status_code < 500, f"{where} -> {response.status_code} {response.text}"
    if response.status_code >= 400:
        assert response.headers["content-type"][0].startswith("application/json"), where
        body = response.json()
        assert isinstance(body, dict), where
        assert isinstance(body.get("error"), str), where
        assert body["error"].strip(), where


def fuzz(app: FastAPI, mode: GenerationMode, headers: dict[str, str]) -> None:
    """Run ``EXAMPLES`` generated requests of ``mode`` against every operation of ``app``."""
    schema = schemathesis.openapi.from_asgi("/api/v1/openapi.json", app)

    @given(case=schema.as_strategy(generation_mode=mode))
    @hypothesis_settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def run(case: Any) -> None:
        check_response(case, case.call(headers=headers))

    run()


@pytest.fixture
def seeded(service: TaskQueueService) -> None:
    """A few tasks, so that ids 1 to 3 exist (one finished, one failed, one queued)."""
    service.add_task("tests.handlers.Succeed", {"n": 1}, queued_by="fuzz")
    service.add_task("tests.handlers.AlwaysFail", max_retries=1)
    drive(service)
    service.add_task("tests.handlers.Succeed", create_run=True, unique_key="fuzz")


@pytest.mark.usefixtures("seeded")
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
@pytest.mark.parametrize("with_token", [True, False], ids=["token", "read-only"])
def test_the_api_never_fails_with_a_5xx(
    settings: Settings, mode: GenerationMode, with_token: bool
) -> None:
    app = create_app(web_settings(settings, token=TOKEN if with_token else ""))
    fuzz(app, mode, {"Authorization": f"Bearer {TOKEN}"})
    app.state.taskq.database.close()
