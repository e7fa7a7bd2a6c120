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
    os.lseek(fd, 0, os.SEEK_SET)
    chunks: list[bytes] = []
    remaining = min(size, cap)
    while remaining > 0:
        chunk = os.read(fd, min(remaining, 1 << 16))
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
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


def _text_stream(fd: int) -> io.TextIOWrapper:
    raw = io.FileIO(fd, mode="w", closefd=False)
    return io.TextIOWrapper(raw, encoding="utf-8", errors="backslashreplace", write_through=True)


@contextmanager
def capture_output(cap: int) -> Iterator[CapturedOutput]:
    """Redirect fds 1 and 2 into temporary files; fill the yielded object when done."""
    captured = CapturedOutput()
    _flush_python_streams()
    with tempfile.TemporaryFile() as out_file, tempfile.TemporaryFile() as err_file:
        saved_stdout = os.dup(1)
        saved_stderr = os.dup(2)
        saved_streams = (sys.stdout, sys.stderr)
        try:
            os.dup2(out_file.fileno(), 1)
            os.dup2(err_file.fileno(), 2)
            sys.stdout, sys.stderr = _text_stream(1), _text_stream(2)
            yield captured
        finally:
            _flush_python_streams()
            sys.stdout, sys.stderr = saved_streams
            os.dup2(saved_stdout, 1)
            os.dup2(saved_stderr, 2)
            os.close(saved_stdout)
            os.close(saved_stderr)
            captured.stdout, out_omitted = _read_capped(out_file.fileno(), cap)
            captured.stderr, err_omitted = _read_capped(err_file.fileno(), cap)
            captured.truncated = {
                name: omitted
                for name, omitted in (("stdout", out_omitted), ("stderr", err_omitted))
                if omitted
            }
