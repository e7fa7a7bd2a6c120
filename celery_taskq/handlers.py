"""Task handlers: the :class:`TaskHandler` base, :class:`TaskError`, and loading by name.

A handler is named in ``TaskQueue.TaskHandlerClass`` either by a name given with
:func:`celery_taskq.registry.register` or as a dotted path ``"package.module.ClassName"`` (or
``"package.module:ClassName"``); a registered name wins. Loading by path is checked step by
step, so that a missing module, a missing class and a class that is not a handler each give
their own clear error, and an optional allow-list confines what may be enqueued or run at all.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from celery_taskq import registry
from celery_taskq.core.exceptions import (
    HandlerClassNotFoundError,
    HandlerError,
    HandlerModuleNotFoundError,
    HandlerNotAllowedError,
    NotATaskHandlerError,
)

if TYPE_CHECKING:
    from celery_taskq.context import RunContext


class TaskError(Exception):
    """A known failure raised by a handler: recorded as the run's ErrorCode and ErrorMessage.

    ``results``, when given, is stored in the failed run's ``Results`` (what was done before
    the failure).
    """

    def __init__(self, message: str, code: str | None = None, *, results: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.results = results


@dataclass(frozen=True)
class Continue:
    """Returned by a handler whose work is not finished: go on from ``checkpoint`` (Combodo).

    The run ends ``success`` with ``checkpoint`` in its ``Checkpoint`` column, the task stays
    open, and its next run is created at once and reads the checkpoint as ``run.checkpoint``.
    ``results``, when given, is stored in the run's ``Results``.
    """

    checkpoint: Any
    results: Any = None


CANCELLED_CODE = "cancelled"
"""``ErrorCode`` of a run that stopped because its task was cancelled."""


class TaskCancelledError(TaskError):
    """Raised inside a handler (by ``run.set_progress`` or ``run.raise_if_cancelled``) once the
    task was cancelled; the run ends ``error`` with code ``cancelled``."""

    def __init__(self, message: str = "the task was cancelled") -> None:
        super().__init__(message, code=CANCELLED_CODE)


class TaskHandler:
    """Base class of every task handler (the seed's ``ITaskHandler``).

    Subclasses implement :meth:`handle_task_run`; its return value is stored as JSON in the
    run's ``Results``. Whatever the handler prints is captured into ``StandardOutput`` and
    ``ErrorOutput``.

    ``retry_backoff_base`` / ``retry_backoff_max`` (seconds), when set on a subclass, override
    the configured retry backoff for its tasks; ``time_budget`` (seconds) overrides the
    configured ``run_time_budget``, which sets ``run.deadline``. ``time_limit`` (seconds)
    overrides the configured ``run_time_limit``: a run still working then is stopped and ends
    ``timeout`` (``0``: no limit; see :mod:`celery_taskq.core.runner.time_limit`).
    """

    retry_backoff_base: float | None = None
    retry_backoff_max: float | None = None
    time_budget: float | None = None
    time_limit: float | None = None

    def validate(self, data: Any) -> None:
        """Refuse ``data`` before it is enqueued by raising an exception; accepts all by default."""

    def change_data_on_error(self, data: Any, error: BaseException) -> Any:
        """Called after a run failed with ``error``: return new task data for the retry.

        Combodo's ``ChangeActionParamsOnError``: for example halve a batch size after a
        timeout from a remote service. Return ``None`` (the default) to keep ``data``. The new
        data must pass :meth:`validate`; if it does not, the old data is kept and the refusal
        is logged.
        """
        return None

    def handle_task_run(self, run: RunContext) -> Any:
        """Do the work of one run. Raise :class:`TaskError` for a known failure."""
        raise NotImplementedError(f"{type(self).__qualname__} must implement handle_task_run")


def split_handler_path(path: str) -> tuple[str, str]:
    """Split ``"pkg.mod.Class"`` or ``"pkg.mod:Class"`` into module and class names."""
    if not isinstance(path, str) or not path.strip():
        raise HandlerError("the task handler must be a dotted path such as 'myapp.tasks.Send'")
    path = path.strip()
    module_name, sep, class_name = path.rpartition(":") if ":" in path else path.rpartition(".")
    if not sep or not module_name or not class_name:
        raise HandlerError(
            f"task handler {path!r} is not a dotted path such as 'myapp.tasks.SendReport'"
        )
    return module_name, class_name


def check_allowed(path: str, allowed_prefixes: Iterable[str]) -> None:
    """Raise :class:`HandlerNotAllowedError` unless ``path`` is under an allowed prefix.

    An entry allows the registered name or dotted path equal to it and everything under it,
    part by part: ``"reports"`` allows ``"reports.send"`` and ``"reports.daily.Send"``, not
    ``"reports_old.Send"``. An empty allow-list allows everything.
    """
    prefixes = tuple(p.replace(":", ".").rstrip(".") for p in allowed_prefixes)
    if not prefixes:
        return
    if not isinstance(path, str):
        raise HandlerError("the task handler must be a registered name or a dotted path")
    name = path.strip().replace(":", ".")
    if not any(name == p or name.startswith(p + ".") for p in prefixes):
        raise HandlerNotAllowedError(
            f"task handler {path!r} is not allowed: it must be one of, or under one of, "
            + ", ".join(repr(p) for p in prefixes)
        )


def load_handler_class(path: str, allowed_prefixes: Iterable[str] = ()) -> type[TaskHandler]:
    """Return the handler class registered as, or importable from, ``path``, checking each step."""
    check_allowed(path, allowed_prefixes)
    registered = registry.lookup(path.strip()) if isinstance(path, str) else None
    if registered is not None:
        return registered
    try:
        module_name, class_name = split_handler_path(path)
    except HandlerError as exc:
        raise HandlerError(
            f"task handler {path!r} is neither a registered name nor a dotted path such as "
            f"'myapp.tasks.SendReport'{_registry_hint()}"
        ) from exc
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and module_name.startswith(exc.name):
            raise HandlerModuleNotFoundError(
                f"task handler {path!r}: no module named {module_name!r}{_registry_hint()}"
            ) from exc
        raise HandlerModuleNotFoundError(
            f"task handler {path!r}: module {module_name!r} failed to import: {exc}"
        ) from exc
    except Exception as exc:
        raise HandlerModuleNotFoundError(
            f"task handler {path!r}: module {module_name!r} failed to import: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    try:
        handler_class = getattr(module, class_name)
    except AttributeError as exc:
        raise HandlerClassNotFoundError(
            f"task handler {path!r}: module {module_name!r} has no class {class_name!r}"
        ) from exc
    if not (isinstance(handler_class, type) and issubclass(handler_class, TaskHandler)):
        raise NotATaskHandlerError(
            f"task handler {path!r} is not a subclass of celery_taskq.TaskHandler"
        )
    return handler_class


def _registry_hint() -> str:
    names = registry.registered_names()
    known = ", ".join(repr(n) for n in names[:10]) + (", ..." if len(names) > 10 else "")
    return (
        f" (registered names: {known or 'none'}; a process must import the module that "
        "registers a name: list it in TASKQ_IMPORTS)"
    )


def create_task_handler(path: str, allowed_prefixes: Iterable[str] = ()) -> TaskHandler:
    """Instantiate the handler named by ``path`` (the seed's ``createTaskHandler``)."""
    handler_class = load_handler_class(path, allowed_prefixes)
    try:
        return handler_class()
    except Exception as exc:
        raise HandlerError(
            f"task handler {path!r} could not be created: {type(exc).__name__}: {exc}"
        ) from exc
