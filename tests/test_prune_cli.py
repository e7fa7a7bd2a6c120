"""``celery-taskq prune`` and the ``retention`` setting: bad input is refused with a message
that says what is wrong, and a dry run prints the counts and writes nothing."""

from __future__ import annotations

import pytest

from celery_taskq.cli import EXIT_OK, EXIT_USAGE, main
from celery_taskq.core.exceptions import ConfigurationError
from celery_taskq.core.models import RunStatus, TaskQueue, TaskRun
from celery_taskq.core.retention import RetentionPolicy, parse_age
from celery_taskq.core.settings import Settings
from celery_taskq.core.storage.database import Database
from tests.helpers import count
from tests.test_prune import Seeder


def run_prune(
    database_url: str, capsys: pytest.CaptureFixture[str], *args: str
) -> tuple[int, str, str]:
    """``celery-taskq prune ARGS`` in-process: (exit code, stdout, stderr)."""
    code = main(["--database-url", database_url, "prune", *args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--older-than", "3x"], "age '3x' is not valid: write a whole number and a unit"),
        (["--older-than", "0d"], "it must be more than 0"),
        (["--older-than", "9999999w"], "is too long: at most 36500d"),
        (
            ["--older-than", "30d", "--pause", "-1"],
            "Invalid value for '--pause': -1.0 is not in the range x>=0",
        ),
        (
            ["--older-than", "30d", "--busy-share", "0"],
            "Invalid value for '--busy-share': 0.0 is not in the range 0.05<=x<=1.0",
        ),
        (["--older-than", "30d", "--status", "running"], "'running' is not one of"),
        ([], "Missing option '--older-than'"),
    ],
)
def test_bad_input_is_refused_with_what_is_wrong_and_nothing_is_deleted(
    database: Database,
    database_url: str,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    message: str,
) -> None:
    # Given a finished old task
    Seeder(database, Seeder.real_now()).task(RunStatus.SUCCESS, [(RunStatus.SUCCESS, 40)])

    # When prune is asked with a bad option
    code, _out, err = run_prune(database_url, capsys, *args)

    # Then it is a usage error naming the fault, and the task is still there
    assert code == EXIT_USAGE
    assert message in err
    assert count(database, TaskQueue) == 1


def test_dry_run_prints_the_counts_and_a_real_run_deletes_them(
    database: Database, database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given two finished old tasks of two runs each, and one that may still run
    seeder = Seeder(database, Seeder.real_now())
    for _ in range(2):
        seeder.task(RunStatus.SUCCESS, [(RunStatus.ERROR, 41), (RunStatus.SUCCESS, 40)])
    seeder.task(RunStatus.ERROR, [(RunStatus.ERROR, 40)], failed=1)

    # When a dry run counts them
    code, out, _ = run_prune(database_url, capsys, "--older-than", "30d", "--dry-run")

    # Then it prints the counts and writes nothing
    assert code == EXIT_OK
    assert out.strip() == "would prune: tasks 2, runs 4, runners 0, beat_ticks 0, schedule_slots 0"
    assert (count(database, TaskQueue), count(database, TaskRun)) == (3, 5)

    # When prune runs for real, for successes only
    code, out, _ = run_prune(
        database_url, capsys, "--older-than", "30d", "--status", "SUCCESS", "--pause", "0.01"
    )

    # Then it deletes what the dry run counted
    assert code == EXIT_OK
    assert out.strip() == "pruned: tasks 2, runs 4, runners 0, beat_ticks 0, schedule_slots 0"
    assert (count(database, TaskQueue), count(database, TaskRun)) == (1, 1)


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        ("success=7x", "age '7x' is not valid"),
        ("success", "'success' is not valid: write KEY=AGE"),
        ("running=7d", "'running' is not a retention key"),
        ("success=7d,success=8d", "'success' is given twice"),
    ],
)
def test_a_malformed_retention_policy_stops_the_process_naming_the_variable(
    policy: str, message: str
) -> None:
    with pytest.raises(ConfigurationError) as raised:
        Settings.resolve(environ={"TASKQ_RETENTION": policy})
    assert str(raised.value).startswith(f"TASKQ_RETENTION={policy!r} is not valid")
    assert message in str(raised.value)
    with pytest.raises(ConfigurationError, match="retention"):
        Settings(retention=policy)
    with pytest.raises(ConfigurationError, match="retention_batch_size must be from 1 to 10000"):
        Settings(retention_batch_size=10_001)


def test_a_policy_gives_runners_and_ticks_its_longest_status_age_unless_it_names_them() -> None:
    policy = RetentionPolicy.parse(" success=7d , error=90d,ticks=1h ")
    assert policy.ages == {
        "success": parse_age("7d"),
        "error": parse_age("90d"),
        "runners": parse_age("90d"),
        "ticks": parse_age("1h"),
    }
    assert RetentionPolicy.parse("").empty
    assert parse_age("2w") == parse_age("14d")
