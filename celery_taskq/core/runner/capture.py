"""Capture of a run's stdout and stderr at the file-descriptor level.

File descriptors 1 and 2 are pointed at temporary files for the duration of a run, so output
from the handler, from C extensions and from child processes (``os.system``, ``subprocess``)
is all caught. ``sys.stdout`` and ``sys.stderr`` are swapped for streams on those descriptors
too, because hosts such as Celery (``worker_redirect_stdouts``) or pytest replace them with
objects that never reach fd 1 or 2. Each stream keeps at most ``cap`` bytes; a stream that was
cut says so at its end.

A spool keeps only what will be kept: while a run writes, a thread of the process punches out
(``fallocate(PUNCH_HOLE)``) whatever a spool holds beyond ``cap`` every
:data:`SPOOL_TRIM_INTERVAL` seconds, keeping the file's size (so the count of bytes cut stays
exact). A handler printing 400 MiB holds about ``cap`` plus what it writes in one interval,
not 400 MiB of memory.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import logging
import os
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

SPOOL_TRIM_INTERVAL = 0.05
"""Seconds between two trims of the spools of a run in progress."""

SPOOL_TRIM_PARK_AFTER = 20
"""Looks without a capture in progress after which the trimming thread waits to be woken."""

SPOOL_TRIM_SLACK = 1024 * 1024
"""Bytes a spool may hold beyond its cap before it is trimmed."""

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


_FALLOC_FL_KEEP_SIZE = 1
_FALLOC_FL_PUNCH_HOLE = 2


def _load_fallocate() -> Any | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).fallocate
    except (OSError, AttributeError):
        return None
    function.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)
    return function


_fallocate = _load_fallocate()


def trim_spool(fd: int, cap: int) -> bool:
    """Free what the spool ``fd`` holds beyond its first ``cap`` bytes, keeping its size;
    whether anything was freed."""
    status = os.fstat(fd)
    if _fallocate is None or status.st_blocks * 512 <= cap + SPOOL_TRIM_SLACK:
        return False
    mode = _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE
    # A file system without holes refuses: its spool keeps growing, as it always did.
    return bool(_fallocate(fd, mode, cap, status.st_size - cap) == 0)


class _SpoolTrimmer:
    """One daemon thread per process that trims the spools of the capture in progress.

    It looks every :data:`SPOOL_TRIM_INTERVAL` seconds while captures go on, and parks after
    :data:`SPOOL_TRIM_PARK_AFTER` looks that found none; a capture wakes it only if it is
    parked, so a run costs two lock round trips, not a thread wake-up.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._spools: tuple[int, ...] = ()
        self._cap = 0
        self._wake = threading.Event()
        self._parked = False
        self._pid = 0

    def watch(self, spools: tuple[int, ...], cap: int) -> None:
        with self._lock:
            self._spools, self._cap = spools, cap
            if self._pid != os.getpid():  # none yet, or it stayed behind in the parent
                self._pid = os.getpid()
                self._wake, self._parked = threading.Event(), False
                threading.Thread(target=self._work, name="taskq-spool-trim", daemon=True).start()
            elif self._parked:
                self._parked = False
                self._wake.set()

    def unwatch(self) -> None:
        with self._lock:
            self._spools = ()

    def _work(self) -> None:
        idle_looks = 0
        while True:
            time.sleep(SPOOL_TRIM_INTERVAL)
            with self._lock:
                wake = self._wake
                if self._spools:
                    idle_looks = 0
                    for fd in self._spools:
                        try:
                            trim_spool(fd, self._cap)
                        except OSError:
                            logger.debug("could not trim a capture spool", exc_info=True)
                    continue
                idle_looks += 1
                if idle_looks < SPOOL_TRIM_PARK_AFTER:
                    continue
                idle_looks = 0
                self._parked = True
                wake.clear()
            wake.wait()


_trimmer = _SpoolTrimmer()


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
            _trimmer.watch((out_fd, err_fd), cap)
            yield captured
        finally:
            _trimmer.unwatch()
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
