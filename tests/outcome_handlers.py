"""Handlers that end in every awkward way: each kind of ``BaseException``, exceptions that
cannot be printed, and outcomes a database refuses as they are (NUL, lone surrogates, an
error code longer than its column, a result over the size limit)."""

from __future__ import annotations

import os
from typing import Any

from celery_taskq import RunContext, TaskError, TaskHandler


class Fatal(BaseException):
    """A ``BaseException`` of a handler's own."""


class UnprintableError(Exception):
    """An exception whose ``str()`` raises."""

    def __str__(self) -> str:
        raise RuntimeError("__str__ is broken")


def _deep(levels: int) -> Any:
    document: Any = "bottom"
    for _ in range(levels):
        document = [document]
    return document


ENDINGS: dict[str, Any] = {
    "keyboard_interrupt": KeyboardInterrupt,
    "generator_exit": GeneratorExit,
    "system_exit": lambda: SystemExit(3),
    "base_exception": lambda: Fatal("fatal"),
    "unprintable": UnprintableError,
    "surrogate_message": lambda: OSError(os.fsdecode(b"cannot open bad\xff.txt")),
    "nul_message": lambda: TaskError("nul\x00here", code="E_NUL"),
    "long_code": lambda: TaskError("a long code", code="E" * 1000),
    "deep_error_results": lambda: TaskError("deep", code="E_DEEP", results=_deep(5000)),
}
"""What :class:`Misbehave` raises, by ``data["ending"]``."""


class Misbehave(TaskHandler):
    """Ends as ``data["ending"]`` says: raising one of :data:`ENDINGS`, or returning a result
    with NUL characters (``nul_results``) or larger than 1 MiB (``huge_result``)."""

    def handle_task_run(self, run: RunContext) -> Any:
        ending = str(run.data["ending"])
        print(f"ending as {ending}", flush=True)
        if ending == "nul_results":
            return {"text": "a\x00b", "key\x00": [os.fsdecode(b"\xfe")]}
        if ending == "huge_result":
            return "x" * (2 * 1024 * 1024)
        raise ENDINGS[ending]()


class ChangeDataRaisesBaseException(TaskHandler):
    """Fails, and its ``change_data_on_error`` raises ``KeyboardInterrupt``."""

    def handle_task_run(self, run: RunContext) -> Any:
        raise TaskError("failed", code="E_FAILED")

    def change_data_on_error(self, data: Any, error: BaseException) -> Any:
        raise KeyboardInterrupt


class CheckpointsUnderLimit(TaskHandler):
    """Saves checkpoints in a tight loop until its 0.3 s time limit stops it: the stop lands
    while a checkpoint transaction is open unless it waits for the transaction to end."""

    time_limit = 0.3

    def handle_task_run(self, run: RunContext) -> Any:
        counter = 0
        while True:
            counter += 1
            run.save_checkpoint({"counter": counter})


class ChangeDataTooDeep(TaskHandler):
    """Fails, and its ``change_data_on_error`` returns data nested deeper than any intake
    accepts."""

    def handle_task_run(self, run: RunContext) -> Any:
        raise TaskError("failed", code="E_FAILED")

    def change_data_on_error(self, data: Any, error: BaseException) -> Any:
        return {"deep": _deep(500)}
