"""Progress: percent, step of steps and status, throttled writes, and watching a run live."""

from __future__ import annotations

import subprocess
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from celery_taskq.api import enqueue, watch
from celery_taskq.cli import main
from celery_taskq.core import notify
from celery_taskq.core.context import PROGRESS_MIN_INTERVAL_SECONDS, Progress, RunContext
from celery_taskq.core.models import RunStatus
from celery_taskq.core.notify import NoNotifier, RedisNotifier, notifier_for
from celery_taskq.core.queue import TaskQueueService
from celery_taskq.core.settings import Settings
from celery_taskq.core.storage.database import Database
from tests.conftest import CLI
from tests.helpers import runs_of


class FakeMonotonic:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def context(writes: list[Progress], clock: FakeMonotonic) -> RunContext:
    return RunContext(
        run_id=1,
        task_queue_id=1,
        handler="x.Y",
        data={},
        write_progress=writes.append,
        monotonic=clock,
    )


def test_progress_is_written_at_most_a_few_times_a_second() -> None:
    writes: list[Progress] = []
    clock = FakeMonotonic()
    run = context(writes, clock)
    for percent in range(1, 101):  # a hundred calls in the same instant
        run.set_progress(percent, step=percent, steps=100, status="busy")
    assert writes == [Progress(1, 1, 100, "busy")]
    clock.now += PROGRESS_MIN_INTERVAL_SECONDS
    run.set_progress(50, step=50, steps=100)
    assert writes[-1] == Progress(50, 50, 100, None)
    run.set_progress(60)
    run.flush_progress()  # the runner flushes the latest value when the run ends
    assert writes[-1] == Progress(60)
    assert len(writes) == 3


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        ((101,), {}, "from 0 to 100"),
        ((float("nan"),), {}, "number from 0 to 100"),
        ((50,), {"step": -1}, "step must be a whole number"),
        ((50,), {"step": 6, "steps": 5}, "step 6 is beyond steps 5"),
        ((50,), {"status": 7}, "status must be text"),
    ],
)
def test_bad_progress_is_refused(
    args: tuple[float], kwargs: dict[str, object], message: str
) -> None:
    run = context([], FakeMonotonic())
    with pytest.raises(ValueError, match=message):
        run.set_progress(*args, **kwargs)  # type: ignore[arg-type]


def test_progress_details_are_visible_while_running_and_watch_follows_them(
    database: Database, database_url: str, settings: Settings
) -> None:
    task_id = enqueue("tests.handlers.Steps", {"steps": 4, "pause": 0.4}, database_url=database_url)
    run_id = runs_of(database, task_id)[0].id
    service = TaskQueueService(database, settings)
    runner = service.get_task_runner()
    assert runner is not None
    worker = threading.Thread(target=lambda: runner.run(burst=True))
    worker.start()
    seen = list(watch(run_id, interval=0.05, timeout=60, database_url=database_url))
    worker.join(timeout=30)
    # Then the watcher saw the steps go by in order, and the end
    steps = [
        run.progress_step for run in seen if run.status is RunStatus.RUNNING and run.progress_step
    ]
    assert steps == sorted(steps)
    assert len(set(steps)) >= 3
    assert any(run.progress_status == "doing step 2" for run in seen)
    final = seen[-1]
    assert (final.status, final.percents_completed) == (RunStatus.SUCCESS, 100)
    assert (final.progress_step, final.progress_steps, final.progress_status) == (
        4,
        4,
        "doing step 4",
    )


def test_cli_watch_and_show(
    database: Database, database_url: str, settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    task_id = enqueue("tests.handlers.Steps", {"steps": 2, "pause": 0.1}, database_url=database_url)
    failing = enqueue("tests.handlers.AlwaysFail", max_retries=1, database_url=database_url)
    runner = TaskQueueService(database, settings).get_task_runner()
    assert runner is not None
    runner.run(burst=True)
    capsys.readouterr()
    assert main(["--database-url", database_url, "watch", str(task_id)]) == 0
    out = capsys.readouterr().out
    assert "[##############################] 100%  success  step 2/2  doing step 2" in out
    assert main(["--database-url", database_url, "watch", str(failing)]) == 1
    assert "ended error: [E_SMTP] the mail server refused" in capsys.readouterr().err
    assert main(["--database-url", database_url, "show", str(task_id)]) == 0
    assert "progress: step 2/2  doing step 2" in capsys.readouterr().out


def test_watch_hears_each_change_over_redis_pubsub_without_polling(
    database: Database, settings: Settings, redis_url: str
) -> None:
    # Given runs announced over Redis, and a watcher that reads the table only every 30 s
    service = TaskQueueService(database, replace(settings, pubsub_url=redis_url))
    assert isinstance(service.notifier, RedisNotifier)
    task_id = service.add_task("tests.handlers.Steps", {"steps": 4, "pause": 0.3}, create_run=True)
    run_id = runs_of(database, task_id)[0].id
    runner = service.get_task_runner()
    assert runner is not None
    watcher = service.watch_run(run_id, interval=30, timeout=60)
    first = next(watcher)  # subscribed before the runner starts
    worker = threading.Thread(target=lambda: runner.run(burst=True))
    worker.start()
    seen = [first, *watcher]
    worker.join(timeout=30)
    # Then every step was seen as it happened: only the notices can have woken the watcher
    steps = {run.progress_step for run in seen if run.status is RunStatus.RUNNING}
    assert {1, 2, 3} <= steps
    assert seen[-1].status is RunStatus.SUCCESS


def test_notifier_follows_the_settings(redis_url: str) -> None:
    assert isinstance(notifier_for(Settings()), NoNotifier)  # the embedded SQL broker
    assert isinstance(notifier_for(Settings(broker_url=redis_url)), RedisNotifier)
    assert isinstance(notifier_for(Settings(broker_url=redis_url, pubsub_url="none")), NoNotifier)
    # A Redis that does not answer costs a warning, never a failed run
    RedisNotifier("redis://127.0.0.1:1/0").publish(1)


def test_notices_of_a_burst_share_one_batch_and_none_is_lost(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(notify, "NOTICE_BATCH_INTERVAL", 0.5)
    notifier = RedisNotifier(redis_url)
    batches: list[int] = []
    make_pipeline = notifier.client.pipeline

    def counting_pipeline(*args: Any, **kwargs: Any) -> Any:
        pipe = make_pipeline(*args, **kwargs)
        execute = pipe.execute

        def counted_execute(*execute_args: Any, **execute_kwargs: Any) -> Any:
            size = len(pipe.command_stack)
            result = execute(*execute_args, **execute_kwargs)
            batches.append(size)
            return result

        monkeypatch.setattr(pipe, "execute", counted_execute)
        return pipe

    monkeypatch.setattr(notifier.client, "pipeline", counting_pipeline)
    with notifier.listen(1) as first, notifier.listen(4) as last:
        notifier.publish(1)
        assert first.wait(10)  # after a quiet spell the first notice is not held back
        for run_id in (2, 3, 4):
            notifier.publish(run_id)
        assert last.wait(10)
    deadline = time.monotonic() + 10
    while len(batches) < 2 and time.monotonic() < deadline:  # the reply of the last batch
        time.sleep(0.01)
    assert batches == [1, 3]
    notifier.close()


def test_cli_watch_follows_a_resumable_task_from_run_to_run(
    database: Database,
    database_url: str,
    subprocess_env: dict[str, str],
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    data = {"total": 6, "per_run": 2, "pause": 0.3, "log": str(tmp_path / "items")}
    task_id = enqueue("tests.handlers.Chunked", data, database_url=database_url)
    # A runner in another process: in this one it would capture what the watcher prints
    with subprocess.Popen([*CLI, "runner", "--burst"], env=subprocess_env) as runner:
        code = main(["--database-url", database_url, "watch", str(task_id), "--timeout", "60"])
        assert runner.wait(timeout=60) == 0
    assert code == 0
    lines = [line for line in capsys.readouterr().out.split("\n") if line.strip()]
    assert [run.status for run in runs_of(database, task_id)] == [RunStatus.SUCCESS] * 3
    assert len(lines) == 3  # one progress line per run
    assert all("success" in line.split("\r")[-1] for line in lines)
