"""Capture of a run's stdout and stderr at the file-descriptor level.

File descriptors 1 and 2 are pointed at temporary files for the duration of a run, so output
from the handler, from C extensions and from child processes (``os.system``, ``subprocess``)
is all caught. ``sys.stdout`` and ``sys.stderr`` are swapped for streams on those descriptors
too, because hosts such as Celery (``worker_redirect_stdouts``) or pytest replace them with
objects that never reach fd 1 or 2. Each stream keeps at most ``cap`` bytes; a stream that was
cut says so at its end.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

TRUNCATION_MARKER = "\n[celery_taskq: output truncated, {omitted} more bytes not kept]\n"


@dataclass
class CapturedOutput:
    """Text captured from stdout and stderr, filled in when the capture ends."""

    stdout: str = ""
    stderr: str = ""
    truncated: dict[str, int] = field(default_factory=dict)


def _read_capped(fd: int, cap: int) -> tuple[str, int]:
    size = os.fstat(fd).st_size
    chunks: list[bytes] = []
    offset, end = 0, min(size, cap)
    # pread leaves the file offset alone: a capture still being written to can be read too.
    while offset < end:
        chunk = os.pread(fd, min(end - offset, 1 << 16), offset)
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
    data = b"".join(chunks)
    omitted = max(size - cap, 0)
    # NUL cannot be stored in PostgreSQL text; undecodable bytes are kept visible as U+FFFD.
    text = data.decode("utf-8", errors="replace").replace("\x00", "\ufffd")
    if omitted:
        text += TRUNCATION_MARKER.format(omitted=omitted)
    return text, omitted


def _flush_python_streams() -> None:
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        if stream is None:
            continue
        with contextlib.suppress(OSError, ValueError):
            stream.flush()


_text_streams: dict[int, io.TextIOWrapper] = {}


def _text_stream(fd: int) -> io.TextIOWrapper:
    # One stream per descriptor, reused from run to run: it writes to whatever fd 1 or 2 points
    # at, and writes through, so nothing of one run is left in it for the next.
    stream = _text_streams.get(fd)
    if stream is None or stream.closed:  # a handler may have closed sys.stdout
        raw = io.FileIO(fd, mode="w", closefd=False)
        stream = io.TextIOWrapper(
            raw, encoding="utf-8", errors="backslashreplace", write_through=True
        )
        _text_streams[fd] = stream
    return stream


def peek_output(cap: int) -> tuple[str, str]:
    """Stdout and stderr captured so far, capped; only meaningful inside :func:`capture_output`.

    Used to record a run that has to be abandoned while its handler still writes.
    """
    _flush_python_streams()
    return _read_capped(1, cap)[0], _read_capped(2, cap)[0]


def _spool_fd() -> int:
    """A descriptor of a new anonymous file for one stream: in memory where Linux offers it
    (one system call, no file-system work per run), else an unlinked temporary file."""
    memfd_create = getattr(os, "memfd_create", None)
    if memfd_create is not None:
        with contextlib.suppress(OSError):
            fd: int = memfd_create("taskq-capture", os.MFD_CLOEXEC)
            return fd
    with tempfile.TemporaryFile() as spool:
        return os.dup(spool.fileno())


@contextmanager
def capture_output(cap: int) -> Iterator[CapturedOutput]:
    """Redirect fds 1 and 2 into temporary files; fill the yielded object when done."""
    captured = CapturedOutput()
    _flush_python_streams()
    with contextlib.ExitStack() as spools:
        out_fd = _spool_fd()
        spools.callback(os.close, out_fd)
        err_fd = _spool_fd()
        spools.callback(os.close, err_fd)
        saved_stdout = os.dup(1)
        saved_stderr = os.dup(2)
        saved_streams = (sys.stdout, sys.stderr)
        try:
            os.dup2(out_fd, 1)
            os.dup2(err_fd, 2)
            sys.stdout, sys.stderr = _text_stream(1), _text_stream(2)
            yield captured
        finally:
            _flush_python_streams()
            sys.stdout, sys.stderr = saved_streams
            os.dup2(saved_stdout, 1)
            os.dup2(saved_stderr, 2)
            os.close(saved_stdout)
            os.close(saved_stderr)
            captured.stdout, out_omitted = _read_capped(out_fd, cap)
            captured.stderr, err_omitted = _read_capped(err_fd, cap)
            captured.truncated = {
                name: omitted
                for name, omitted in (("stdout", out_omitted), ("stderr", err_omitted))
                if omitted
            }
