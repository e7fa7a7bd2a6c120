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
from typing import BinaryIO

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


def _text_stream(fd: int) -> io.TextIOWrapper:
    raw = io.FileIO(fd, mode="w", closefd=False)
    return io.TextIOWrapper(raw, encoding="utf-8", errors="backslashreplace", write_through=True)


def peek_output(cap: int) -> tuple[str, str]:
    """Stdout and stderr captured so far, capped; only meaningful inside :func:`capture_output`.

    Used to record a run that has to be abandoned while its handler still writes.
    """
    _flush_python_streams()
    return _read_capped(1, cap)[0], _read_capped(2, cap)[0]


def _spool_file() -> BinaryIO:
    """An anonymous file for one stream: in memory where Linux offers it (one system call,
    no file-system work per run), else a temporary file."""
    memfd_create = getattr(os, "memfd_create", None)
    if memfd_create is not None:
        with contextlib.suppress(OSError):
            return open(memfd_create("taskq-capture", os.MFD_CLOEXEC), "w+b")
    return tempfile.TemporaryFile()


@contextmanager
def capture_output(cap: int) -> Iterator[CapturedOutput]:
    """Redirect fds 1 and 2 into temporary files; fill the yielded object when done."""
    captured = CapturedOutput()
    _flush_python_streams()
    with _spool_file() as out_file, _spool_file() as err_file:
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
