"""Linking each firing of the app's own ``beat_schedule`` entries to the entry's name: an
audited native task that beat sent has ``QueuedById`` ``beat:<entry name>``, so its history
reads like a schedule's (``celery-taskq list --queued-by beat:<entry name>``).

Beat sends an entry in ``Scheduler.apply_async(entry, producer, advance, **kwargs)``
(``celery/beat.py``, called by ``apply_entry`` from ``tick``), which calls the task's own
``apply_async`` (or ``app.send_task``) with the entry's args, kwargs and options, synchronously
in beat's thread; ``before_task_publish`` fires inside that call. At ``beat_init`` the
scheduler's ``apply_async`` is wrapped to note which entry is being sent while it runs; the
arguments go through untouched, so the message, its routing and its options are Celery's own.

The audit's publish receiver then fills ``QueuedById`` from the noted entry and puts the same
value in the message's ``taskq_queued_by`` header (the header a caller may set itself), so that
the worker's record of the task agrees whichever of the two is written first. An entry whose
options already carry that header keeps it, and a task that is not audited is left exactly as
sent.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import Any

from celery import Celery, signals

BEAT_QUEUED_BY_PREFIX = "beat:"
"""``QueuedById`` of a task sent by a beat entry: this prefix, then the entry's name."""

_firing = threading.local()
"""``entry``: the name of the beat entry this thread is sending, if any."""


def take_firing_entry() -> str | None:
    """The name of the beat entry whose task this thread is publishing now, or ``None``.

    Taken once: a further publish in the same call (an eager task publishing others) is not
    the entry's firing."""
    name = getattr(_firing, "entry", None)
    if name is None:
        return None
    _firing.entry = None
    return str(name)


def beat_queued_by(entry_name: str) -> str:
    """The ``QueuedById`` of a task sent by the beat entry ``entry_name``."""
    return f"{BEAT_QUEUED_BY_PREFIX}{entry_name}"


def connect_beat_link(app: Celery) -> None:
    """Wrap the scheduler of every beat of ``app`` as it starts (``beat_init``)."""

    def on_beat_init(sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", None) is app:
            note_entries(sender.scheduler)

    signals.beat_init.connect(
        on_beat_init, weak=False, dispatch_uid=f"celery_taskq-beat-link-{id(app)}"
    )


def note_entries(scheduler: Any) -> None:
    """Make ``scheduler.apply_async`` note its entry's name while it sends it (once)."""
    send = scheduler.apply_async
    if getattr(send, "taskq_notes_entries", False):
        return
    scheduler.apply_async = _noting(send)


def _noting(send: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(send)
    def apply_async(entry: Any, *args: Any, **kwargs: Any) -> Any:
        previous = getattr(_firing, "entry", None)
        _firing.entry = getattr(entry, "name", None)
        try:
            return send(entry, *args, **kwargs)
        finally:
            _firing.entry = previous

    apply_async.taskq_notes_entries = True  # type: ignore[attr-defined]
    return apply_async
