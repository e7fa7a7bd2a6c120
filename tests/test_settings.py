"""Settings: resolved once, env > Celery config > defaults, with clear errors."""

from __future__ import annotations

import pytest

from celery_taskq.celery import settings_from_celery
from celery_taskq.core.exceptions import ConfigurationError
from celery_taskq.core.settings import DEFAULT_TASK_RUNNER_LIMIT, Settings


def test_defaults() -> None:
    settings = Settings.resolve(environ={})
    assert settings.database_url == "sqlite:///celery_taskq.db"
    assert settings.task_runner_limit == DEFAULT_TASK_RUNNER_LIMIT == 8
    assert settings.broker_url == "sqla+sqlite:///celery_taskq-broker.db"


def test_environment_wins_over_celery_config_which_wins_over_defaults() -> None:
    conf = {"taskq_task_runner_limit": 3, "taskq_process_interval": 7, "taskq_poll_interval": 0.5}
    settings = settings_from_celery(conf, environ={"TASKQ_TASK_RUNNER_LIMIT": "5"})
    assert settings.task_runner_limit == 5  # env
    assert settings.process_interval == 7.0  # Celery config
    assert settings.poll_interval == 0.5
    assert settings.heartbeat_timeout == 60.0  # default


def test_allow_list_from_a_comma_separated_variable() -> None:
    env = {"TASKQ_ALLOWED_HANDLER_PREFIXES": "myapp.tasks, reports ,"}
    assert Settings.resolve(environ=env).allowed_handler_prefixes == ("myapp.tasks", "reports")


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"TASKQ_TASK_RUNNER_LIMIT": "eight"}, "TASKQ_TASK_RUNNER_LIMIT='eight' is not valid"),
        ({"TASKQ_TASK_RUNNER_LIMIT": "-1"}, "task_runner_limit must be 0 or more"),
        ({"TASKQ_POLL_INTERVAL": "0"}, "poll_interval must be positive"),
        ({"TASKQ_HEARTBEAT_TIMEOUT": "5"}, "heartbeat_timeout must be longer"),
    ],
)
def test_bad_values_are_refused_clearly(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        Settings.resolve(environ=env)


def test_switches_read_the_usual_words_and_refuse_others() -> None:
    for word, expected in (
        ("on", True),
        ("TRUE", True),
        ("1", True),
        ("off", False),
        ("no", False),
    ):
        settings = Settings.resolve(environ={"TASKQ_HANDLER_RUNNERS": word})
        assert settings.handler_runners is expected, word
    with pytest.raises(ConfigurationError, match="TASKQ_INTERNAL_TASK_EVENTS='maybe'"):
        Settings.resolve(environ={"TASKQ_INTERNAL_TASK_EVENTS": "maybe"})
