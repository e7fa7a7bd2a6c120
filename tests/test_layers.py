"""The core never imports Celery, click or a web framework."""

from __future__ import annotations

import subprocess
import sys

CORE_MODULES = [
    "celery_taskq",
    "celery_taskq.core.models",
    "celery_taskq.core.storage.database",
    "celery_taskq.core.statements.claim",
    "celery_taskq.core.statements.runs",
    "celery_taskq.core.statements.tasks",
    "celery_taskq.core.statements.runners",
    "celery_taskq.core.statements.beat",
    "celery_taskq.core.statements.native",
    "celery_taskq.core.runner.liveness",
    "celery_taskq.core.handlers",
    "celery_taskq.core.runner.capture",
    "celery_taskq.core.queue",
    "celery_taskq.core.runner.loop",
    "celery_taskq.api",
    "celery_taskq.core.registry",
    "celery_taskq.core.intake",
    "celery_taskq.core.steps",
    "celery_taskq.core.context",
    "celery_taskq.core.listing",
    "celery_taskq.core.snapshots",
    "celery_taskq.reports.report",
    "celery_taskq.reports.series",
    "celery_taskq.reports.text",
]
FORBIDDEN = ["celery", "kombu", "click", "flask", "starlette", "fastapi", "django"]


def test_core_imports_without_celery_click_or_web() -> None:
    # Given the forbidden packages made unimportable, When every core module is imported
    program = "\n".join(
        [
            "import sys",
            *(f"sys.modules[{name!r}] = None" for name in FORBIDDEN),
            *(f"import {module}" for module in CORE_MODULES),
        ]
    )
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True)
    # Then nothing fails to import
    assert result.returncode == 0, result.stderr
