"""Errors raised by celery_taskq.

Every library error derives from :class:`TaskqError`; its docstring is its default message.
:class:`celery_taskq.core.handlers.TaskError` is *not* part of this tree: handlers raise it to
report a known failure of their own, and it is recorded on the run rather than propagated.

.. code-block:: text

    TaskqError
    ├── ConfigurationError
    ├── InvalidTaskError
    │   ├── InvalidTaskDataError
    │   │   └── TaskDataLimitError
    │   ├── InvalidArgumentError
    │   ├── DuplicateTaskError
    │   └── HandlerError
    │       ├── HandlerModuleNotFoundError
    │       ├── HandlerClassNotFoundError
    │       ├── NotATaskHandlerError
    │       └── HandlerNotAllowedError
    ├── NotFoundError
    │   └── TaskNotFoundError
    ├── PublishError
    └── StorageError
        ├── StorageRefusedError
        └── SchemaNotReadyError
"""

from __future__ import annotations


class TaskqError(Exception):
    """A celery_taskq error."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())

    @property
    def message(self) -> str:
        """The human-readable message."""
        return str(self)


class ConfigurationError(TaskqError):
    """The configuration is not valid."""


class InvalidTaskError(TaskqError):
    """The task cannot be enqueued as given."""


class InvalidTaskDataError(InvalidTaskError):
    """The task data is not valid JSON."""


class TaskDataLimitError(InvalidTaskDataError):
    """The task data is deeper or larger than the task data limits allow."""


class InvalidArgumentError(InvalidTaskError):
    """An argument has a value that is not allowed."""


class DuplicateTaskError(InvalidTaskError):
    """An unfinished task with this unique key exists."""

    def __init__(self, message: str | None = None, existing_id: int | None = None) -> None:
        super().__init__(message)
        self.existing_id = existing_id


class HandlerError(InvalidTaskError):
    """The task handler cannot be loaded."""


class HandlerModuleNotFoundError(HandlerError):
    """The module of the task handler cannot be imported."""


class HandlerClassNotFoundError(HandlerError):
    """The module has no class of the given name."""


class NotATaskHandlerError(HandlerError):
    """The class is not a TaskHandler."""


class HandlerNotAllowedError(HandlerError):
    """The handler is outside the configured allow-list."""


class NotFoundError(TaskqError):
    """The record does not exist."""


class TaskNotFoundError(NotFoundError):
    """No task has this id."""


class PublishError(TaskqError):
    """Celery could not publish the message: nothing was sent."""


class StorageError(TaskqError):
    """The database refused the operation."""


class StorageRefusedError(StorageError):
    """The database refused the values written: retrying the same write cannot succeed."""


class SchemaNotReadyError(StorageError):
    """The database schema is missing or out of date: run `celery-taskq db upgrade`."""
