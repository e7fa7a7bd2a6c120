"""Loading handlers by name: a registered name or a dotted path, under an optional allow-list.

A handler is named in ``TaskQueue.TaskHandlerClass`` either by a name given with
:func:`celery_taskq.core.registry.register` or as a dotted path ``"package.module.ClassName"``
(or ``"package.module:ClassName"``); a registered name wins. Loading by path is checked step by
step, so that a missing module, a missing class and a class that is not a handler each give
their own clear error, and an optional allow-list confines what may be enqueued or run at all.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable

from celery_taskq.core import registry
from celery_taskq.core.exceptions import (
    HandlerClassNotFoundError,
    HandlerError,
    HandlerModuleNotFoundError,
    HandlerNotAllowedError,
    NotATaskHandlerError,
)
from celery_taskq.core.handlers import TaskHandler


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
