"""A worker's main process loads what its pool processes use, then freezes its heap, before
the pool forks (:mod:`celery_taskq.celery.preload`): each check runs in a fresh interpreter, so
that what it finds imported or frozen is the preload's doing."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

WORKER_INIT = """
import gc, json, sys
from celery import Celery, signals
from celery_taskq.celery import install
app = Celery("preloaded", broker="memory://")
app.conf.taskq_database_url = "postgresql+psycopg://nobody@127.0.0.1:1/none"
install(app)
before = {"frozen": gc.get_freeze_count(), "psycopg": "psycopg" in sys.modules}
signals.worker_init.send(sender=None)
after = {"frozen": gc.get_freeze_count(), "psycopg": "psycopg" in sys.modules}
print(json.dumps({"before": before, "after": after}))
"""


def worker_init(preload: str | None) -> dict[str, dict[str, object]]:
    """What a fresh app process holds before and after Celery's ``worker_init``."""
    env_setting = [] if preload is None else [f"TASKQ_FORK_PRELOAD={preload}"]
    result = subprocess.run(
        ["env", *env_setting, sys.executable, "-c", WORKER_INIT],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    found: dict[str, dict[str, object]] = json.loads(result.stdout.splitlines()[-1])
    return found


def test_worker_init_loads_the_driver_and_freezes_the_heap_without_connecting() -> None:
    # Given an installed app whose database cannot be reached (port 1), when its worker starts
    found = worker_init(None)
    # Then the driver is loaded and the heap frozen, and no connection was tried (none raised)
    assert found["before"] == {"frozen": 0, "psycopg": False}
    assert found["after"]["psycopg"] is True
    frozen = found["after"]["frozen"]
    assert isinstance(frozen, int)
    assert frozen > 0


@pytest.mark.parametrize("value", ["false", "0"])
def test_fork_preload_off_leaves_the_worker_as_celery_starts_it(value: str) -> None:
    found = worker_init(value)
    assert found["after"] == {"frozen": 0, "psycopg": False}
