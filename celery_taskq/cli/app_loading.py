"""``--app``: the Celery app whose config the command reads, found as ``celery -A`` finds it.

The current directory goes on the import path first, as ``celery -A`` and ``python -m`` put
it, so that the project's own modules (its Celery app, its handlers) import from where the
command runs. Celery is imported only when an app is given: the other commands, and the runner
processes that import the CLI, stay without it.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import TYPE_CHECKING

from celery_taskq.core.exceptions import ConfigurationError
from celery_taskq.core.settings import Settings

if TYPE_CHECKING:
    from celery import Celery

logger = logging.getLogger(__name__)

APP_ENV = "TASKQ_APP"
"""The environment variable of ``--app``; runner processes started by the CLI inherit it."""


def put_working_directory_on_path() -> None:
    """Put the current directory first on ``sys.path`` unless it is already there."""
    try:
        cwd = os.getcwd()
    except OSError:  # the directory was removed under us: nothing to import from it
        return
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)


def load_celery_app(name: str) -> Celery:
    """The Celery app ``name`` names: ``module:attribute``, ``module.attribute``, or a module
    holding an ``app`` or ``celery`` attribute (Celery's own ``find_app`` rules).

    Raises :class:`~celery_taskq.core.exceptions.ConfigurationError`, with what went wrong as
    its cause, when the name finds no app or importing its module fails.
    """
    from celery import Celery
    from celery.app.utils import find_app

    where = f"cannot load the Celery app {name!r} (--app, {APP_ENV})"
    try:
        found = find_app(name)
    except ModuleNotFoundError as exc:
        # find_app imports the whole name as a module once the attribute is not found: the
        # attribute's error is then the one that says what is wrong.
        missing_attribute = exc.__context__
        if exc.name == name and isinstance(missing_attribute, AttributeError):
            raise ConfigurationError(f"{where}: {missing_attribute}") from None
        target = name.replace(":", ".")
        if exc.name and (target == exc.name or target.startswith(exc.name + ".")):
            raise ConfigurationError(f"{where}: there is no module {exc.name!r}") from None
        raise _import_failed(where, exc) from None
    except AttributeError as exc:
        raise ConfigurationError(f"{where}: {exc}") from None
    except Exception as exc:  # the app's own module raised
        raise _import_failed(where, exc) from None
    if not isinstance(found, Celery):
        raise ConfigurationError(f"{where}: it is a {type(found).__name__}, not a Celery app")
    return found


def _import_failed(where: str, exc: Exception) -> ConfigurationError:
    # The project's error alone: find_app's own attempts before it would only blur it.
    logger.debug("importing the Celery app failed", exc_info=exc)
    return ConfigurationError(f"{where}: importing it failed: {type(exc).__name__}: {exc}")


def settings_of_app(app: Celery) -> Settings:
    """The settings a worker of ``app`` reads: those ``install(app)`` holds (given to it, or
    resolved from the app), else ``TASKQ_*`` variables, then the app's ``taskq_*`` config
    keys, then the defaults."""
    from celery_taskq.celery.state import TaskqCelery, settings_from_celery

    installed = getattr(app, "taskq", None)
    if isinstance(installed, TaskqCelery):
        return installed.settings
    return settings_from_celery(app.conf)
