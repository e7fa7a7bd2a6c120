"""What a native Celery task's attempt writes to stdout and stderr, for its run row.

:func:`start_capture` begins capturing for the current attempt; :meth:`OutputCapture.finish`
ends it and returns the text captured (capped to ``cap`` bytes per stream).

The capture tees, it does not steal. While an attempt runs, ``sys.stdout`` and ``sys.stderr``
are wrapped in a :class:`TeeStream` that passes every write on, unchanged and at once, to the
stream it wraps (the terminal, a file, or Celery's ``LoggingProxy`` under
``worker_redirect_stdouts``), and also keeps a copy for each capture open on the writing
thread. So a task's ``print()`` still reaches the worker's own output, live, and the run row
gets the same text.

Why at the Python level, and not by pointing file descriptors 1 and 2 elsewhere as handler
runs do (:mod:`celery_taskq.core.runner.capture`):

* the worker's own log lines never enter the capture. Celery's handlers write to
  ``sys.__stderr__``, not to ``sys.stderr``, so "Task ... succeeded" and the traceback Celery
  logs stay out of ``ErrorOutput``; behind a redirected descriptor they would be both stolen
  from the worker's output and mixed into the run's;
* copies are kept per thread, so concurrent attempts (a threads pool, an eager task in a web
  request) each get their own output and nobody else's;
* it costs a thread-local look-up per write and no system call: about 5 µs an attempt, against
  about 55 µs for pointing the descriptors at files (``benchmarks/bench_native_capture.py``).

What it does not see: output written straight to the descriptors (a subprocess, a C
extension), bytes written to ``sys.stdout.buffer``, and writes from threads the task starts.
Those still reach the worker's output; they are just not in the run row. Outside every
capture the process's ``sys.stdout`` and ``sys.stderr`` are the objects they were before.
"""

from __future__ import annotations

import sys
import threading
from typing import IO, Any

from celery_taskq.core.runner.capture import TRUNCATION_MARKER

_STDOUT, _STDERR = 0, 1

_local = threading.local()
_lock = threading.Lock()
_open_captures = 0


class _StreamCopy:
    """The part of one stream kept for one capture: at most ``cap`` bytes, and a count of the
    bytes left out beyond them."""

    __slots__ = ("_cap", "_chunks", "_kept", "_omitted")

    def __init__(self, cap: int) -> None:
        self._cap = cap
        self._chunks: list[str] = []
        self._kept = 0
        self._omitted = 0

    def keep(self, text: str) -> None:
        size = len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))
        room = self._cap - self._kept
        if size <= room:
            self._chunks.append(text)
            self._kept += size
            return
        kept = 0
        if room > 0:
            # Cut at a character boundary: a character that does not fit whole is left out.
            head = text.encode("utf-8", "surrogatepass")[:room].decode("utf-8", "ignore")
            kept = len(head.encode("utf-8", "surrogatepass"))
            self._chunks.append(head)
        self._kept = self._cap  # whatever comes later is left out too, so the text stays whole
        self._omitted += size - kept

    def text(self) -> str:
        text = "".join(self._chunks)
        if not text.isascii():
            # A lone surrogate cannot be stored as UTF-8; NUL cannot be stored in PostgreSQL text.
            text = text.encode("utf-8", "replace").decode("utf-8").replace("\x00", "\ufffd")
        elif "\x00" in text:
            text = text.replace("\x00", "\ufffd")
        if self._omitted:
            text += TRUNCATION_MARKER.format(omitted=self._omitted)
        return text


class OutputCapture:
    """The output of one attempt, being captured on the thread that started it."""

    def __init__(self, cap: int) -> None:
        self._streams = (_StreamCopy(cap), _StreamCopy(cap))
        self._result: tuple[str, str] | None = None
        self._thread_captures: list[OutputCapture] = []

    def keep(self, slot: int, text: str) -> None:
        """Keep a copy of ``text`` written to stdout (slot 0) or stderr (slot 1)."""
        self._streams[slot].keep(text)

    def finish(self) -> tuple[str, str]:
        """Stop capturing; ``(stdout, stderr)`` written during the attempt.

        Called again, it returns the same text.
        """
        if self._result is None:
            _close(self)
            self._result = (self._streams[_STDOUT].text(), self._streams[_STDERR].text())
        return self._result


class TeeStream:
    """Stands in for ``sys.stdout`` or ``sys.stderr`` while captures are open: every write goes
    on to the wrapped stream, and a copy to each capture open on the writing thread.

    Everything else (``flush``, ``fileno``, ``isatty``, ``encoding``, ...) is the wrapped
    stream's own.
    """

    def __init__(self, wrapped: IO[str], slot: int) -> None:
        self.wrapped = wrapped
        self._slot = slot

    def write(self, text: str) -> int:
        """Write ``text`` to the wrapped stream, and keep a copy for this thread's captures."""
        written = self.wrapped.write(text)
        captures: list[OutputCapture] | None = getattr(_local, "captures", None)
        if captures and isinstance(text, str):
            for capture in captures:
                capture.keep(self._slot, text)
        return written

    def writelines(self, lines: Any) -> None:
        """Write each of ``lines`` (through :meth:`write`, so each is kept too)."""
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.wrapped, name)


def start_capture(cap: int) -> OutputCapture:
    """Start capturing what this thread writes to ``sys.stdout`` and ``sys.stderr``, for one
    attempt; the writes still reach those streams."""
    global _open_captures
    capture = OutputCapture(cap)
    with _lock:
        _open_captures += 1
        sys.stdout = _wrap(sys.stdout, _STDOUT)
        sys.stderr = _wrap(sys.stderr, _STDERR)
    captures: list[OutputCapture] | None = getattr(_local, "captures", None)
    if captures is None:
        captures = _local.captures = []
    captures.append(capture)
    capture._thread_captures = captures
    return capture


def _wrap(stream: Any, slot: int) -> Any:
    if stream is None or isinstance(stream, TeeStream):
        return stream
    return TeeStream(stream, slot)


def _close(capture: OutputCapture) -> None:
    """Take ``capture`` off its thread; with no capture open anywhere, put back the streams."""
    global _open_captures
    # The list of the thread that started it: finish() may come from another thread.
    captures = capture._thread_captures
    if capture in captures:
        captures.remove(capture)
    with _lock:
        _open_captures -= 1
        if _open_captures == 0:
            # A stream the task replaced in the meantime is the task's business: left alone.
            if isinstance(sys.stdout, TeeStream):
                sys.stdout = sys.stdout.wrapped
            if isinstance(sys.stderr, TeeStream):
                sys.stderr = sys.stderr.wrapped
