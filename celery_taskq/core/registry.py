"""The handler registry: short, stable names for handler classes (datatogether's task types).

.. code-block:: python

    @register("reports.send")
    class SendReport(TaskHandler): ...

    enqueue("reports.send", {"to": "a@b.c"})

A registered name works wherever a dotted path does, and is what ``TaskHandlerClass`` stores,
so a class can move between modules without breaking queued tasks. Registration happens when
the registering module is imported: every process that enqueues or runs such tasks must import
it — list it in the ``imports`` setting (``TASKQ_IMPORTS``), which every runner, worker and the
CLI import at start.
"""

from __future__ import annotations

import importlib
import re
import threading
from collections.abc import Callable, Iterable
from typing import TypeVar

from celery_taskq.core.exceptions import ConfigurationError, HandlerError
from celery_taskq.core.handlers import TaskHandler

HandlerClass = TypeVar("HandlerClass", bound="type[TaskHandler]")

NAME_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]*(?:[.:][A-Za-z_][A-Za-z0-9_\-]*)*")
"""A registered name: identifiers (dashes allowed) joined by dots or colons."""

NAME_MAX_LENGTH = 255
"""``TaskHandlerClass`` holds at most this many characters."""

_registry: dict[str, type[TaskHandler]] = {}
_lock = threading.Lock()


def register(name: str) -> Callable[[HandlerClass], HandlerClass]:
    """Class decorator: make ``name`` stand for the decorated :class:`TaskHandler` subclass.

    A name may be registered once; registering it again for the same class (a module imported
    twice) is harmless, for another class it raises :class:`HandlerError`.
    """
    check_name(name)

    def decorator(handler_class: HandlerClass) -> HandlerClass:
        if not (isinstance(handler_class, type) and issubclass(handler_class, TaskHandler)):
            raise HandlerError(
                f"@register({name!r}) must decorate a subclass of celery_taskq.TaskHandler, "
                f"not {handler_class!r}"
            )
        with _lock:
            existing = _registry.get(name)
            if existing is not None and _qualified(existing) != _qualified(handler_class):
                raise HandlerError(
                    f"handler name {name!r} is already registered for {_qualified(existing)}"
                )
            _registry[name] = handler_class
        return handler_class

    return decorator


def check_name(name: str) -> None:
    """Raise :class:`HandlerError` unless ``name`` can be registered."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise HandlerError(
            f"handler name {name!r} is not valid: use letters, digits, '_' and '-', "
            "in parts joined by '.', such as 'reports.send'"
        )
    if len(name) > NAME_MAX_LENGTH:
        raise HandlerError(f"handler name is longer than {NAME_MAX_LENGTH} characters")


def lookup(name: str) -> type[TaskHandler] | None:
    """The class registered under ``name``, or ``None``."""
    return _registry.get(name)


def registered_names() -> tuple[str, ...]:
    """Every registered name, sorted."""
    with _lock:
        return tuple(sorted(_registry))


def unregister(name: str) -> None:
    """Forget ``name`` (for tests and plugin unloading); unknown names are ignored."""
    with _lock:
        _registry.pop(name, None)


def import_modules(modules: Iterable[str]) -> None:
    """Import each module of the ``imports`` setting, so that its ``@register`` calls run."""
    for module in modules:
        try:
            importlib.import_module(module)
        except Exception as exc:
            raise ConfigurationError(
                f"imports: module {module!r} failed to import: {type(exc).__name__}: {exc}"
            ) from exc


def _qualified(handler_class: type) -> str:
    return f"{handler_class.__module__}.{handler_class.__qualname__}"
