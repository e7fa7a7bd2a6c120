"""The README's example commands, run as written: a multi-step task and a resumable task."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

from celery_taskq.core.models import RunStatus
from celery_taskq.core.storage.database import Database
from tests.conftest import CLI, PROJECT_ROOT
from tests.helpers import runs_of

README = PROJECT_ROOT / "README.md"


def readme_example_commands() -> list[list[str]]:
    """The commands between the README's examples markers, as argument lists."""
    text = README.read_text()
    block = re.search(r"<!-- examples:start -->\n```sh\n(.*?)```", text, re.S)
    assert block is not None, "the README has no examples block"
    commands = shlex.split(block.group(1), comments=True, posix=True)
    # shlex splits the whole block into words; start a command at each "celery-taskq".
    split: list[list[str]] = []
    for word in commands:
        if word == "celery-taskq":
            split.append([])
        else:
            split[-1].append(word)
    return split


def test_the_readme_examples_run_and_show_their_runs(
    database: Database, subprocess_env: dict[str, str], tmp_path: Path
) -> None:
    commands = readme_example_commands()
    assert [c[0] for c in commands] == ["db", "enqueue", "enqueue", "runner", "show", "show"]
    outputs = []
    for args in commands:
        if args[0] == "db":
            continue  # the test database is migrated already
        if args[:2] == ["enqueue", "celery_taskq.examples.resumable.CountPrimes"]:
            args = [*args[:2], '{"below": 100000, "chunk_seconds": 0.01}']  # a shorter count
        result = subprocess.run(
            [*CLI, *args], env=subprocess_env, capture_output=True, text=True, cwd=tmp_path
        )
        assert result.returncode == 0, (args, result.stderr)
        outputs.append(result.stdout)
    steps_id, primes_id = int(outputs[0]), int(outputs[1])
    show_steps, show_primes = outputs[3], outputs[4]
    # The multi-step task: the second step failed without interrupting, the third still ran
    assert f"task {steps_id}: taskq.steps" in show_steps
    assert "step 1: success  dump users" in show_steps
    assert "step 2: error    dump orders  [E_LOCKED] table 'orders' is locked" in show_steps
    assert "step 3: success  compress" in show_steps
    assert "compressing the dump at level 9" in show_steps
    # The resumable task: several runs, each resuming where the last stopped, and the count
    runs = runs_of(database, primes_id)
    assert len(runs) >= 2
    assert all(run.status is RunStatus.SUCCESS for run in runs)
    checkpoints = [run.checkpoint["next"] for run in runs[:-1] if run.checkpoint]
    assert checkpoints == sorted(checkpoints)
    assert len(checkpoints) == len(runs) - 1
    assert runs[-1].results == {"below": 100000, "primes": 9592}
    assert show_primes.count("checkpoint: ") == len(runs) - 1
    assert '"primes": 9592' in show_primes
