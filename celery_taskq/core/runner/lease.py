"""A runner's lease on the runs it holds, fenced by the kernel.

A runner holds a *lease*: it is valid for ``duration`` seconds (``TASKQ_HEARTBEAT_TIMEOUT``)
after the last heartbeat the database accepted. While the runner holds a run, a POSIX timer
on ``CLOCK_BOOTTIME`` is armed to send ``SIGKILL`` to the runner's own process the moment the
lease runs out. The kernel delivers that signal whatever the process is doing: a handler
holding the GIL in one long C call, a process stopped by ``SIGSTOP``, a thread deadlocked.
So a runner that can no longer renew its lease cannot go on executing a run past it, and a
process that was stopped past its lease never resumes (the kernel kills it while stopped).

The overseer, on its side (see :mod:`celery_taskq.core.runner.liveness`), hands a run to another
runner only when its holder is proved dead (same host and PID namespace), or its lease expired more
than ``TASKQ_LEASE_MARGIN`` seconds ago. The margin covers the clock difference between the two
hosts; ``CLOCK_BOOTTIME`` keeps counting through a suspend, so a resumed machine finds its timer
already expired.

The lease's start is taken *before* each renewal is sent (:meth:`Lease.renewing`), so the
timer never outlives ``HeartbeatOn + duration`` as the runner's clock reads it.

Where the platform has no POSIX timers (not Linux), :meth:`KernelDeadline.create` returns
``None`` and the lease is not fenced: the overseer's margin is then the only protection.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import sys
import threading
import time
from typing import Any

logger = logging.getLogger(__name__)

_SIGEV_SIGNAL = 0
_TIMER_ABSTIME = 1


class _SigVal(ctypes.Union):
    _fields_ = (("sival_int", ctypes.c_int), ("sival_ptr", ctypes.c_void_p))


class _SigEvent(ctypes.Structure):
    # glibc and musl: the value, the signal, the notification kind, then a 48-byte union.
    _fields_ = (
        ("sigev_value", _SigVal),
        ("sigev_signo", ctypes.c_int),
        ("sigev_notify", ctypes.c_int),
        ("_reserved", ctypes.c_byte * 48),
    )


class _TimeSpec(ctypes.Structure):
    _fields_ = (("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long))


class _ITimerSpec(ctypes.Structure):
    _fields_ = (("it_interval", _TimeSpec), ("it_value", _TimeSpec))


def _load_timer_functions() -> Any | None:
    if not sys.platform.startswith("linux") or not hasattr(time, "CLOCK_BOOTTIME"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        functions = (libc.timer_create, libc.timer_settime, libc.timer_delete)
    except (OSError, AttributeError):
        return None
    create, settime, delete = functions
    create.argtypes = (ctypes.c_int, ctypes.POINTER(_SigEvent), ctypes.POINTER(ctypes.c_void_p))
    settime.argtypes = (
        ctypes.c_void_p,
        ctypes.c_int,
        ctypes.POINTER(_ITimerSpec),
        ctypes.POINTER(_ITimerSpec),
    )
    delete.argtypes = (ctypes.c_void_p,)
    return libc


_libc = _load_timer_functions()


def boottime() -> float:
    """Seconds on ``CLOCK_BOOTTIME`` (monotonic, and counting through a suspend)."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


class KernelDeadline:
    """A POSIX timer that sends ``SIGKILL`` to this process when it expires.

    The signal comes from the kernel: nothing in this process, the GIL included, can delay it.
    Timers are not inherited by a forked child, and end with the process.
    """

    def __init__(self, timer_id: ctypes.c_void_p) -> None:
        self._timer_id = timer_id
        self._closed = False

    @classmethod
    def create(cls) -> KernelDeadline | None:
        """A new disarmed deadline, or ``None`` where the platform has no POSIX timers."""
        if _libc is None:
            return None
        event = _SigEvent()
        event.sigev_notify = _SIGEV_SIGNAL
        event.sigev_signo = signal.SIGKILL
        timer_id = ctypes.c_void_p()
        if _libc.timer_create(time.CLOCK_BOOTTIME, ctypes.byref(event), ctypes.byref(timer_id)):
            errno = ctypes.get_errno()
            logger.warning(
                "cannot create a kernel timer (%s): runs are not fenced",
                os.strerror(errno),
                extra={"action": "fence_unavailable"},
            )
            return None
        return cls(timer_id)

    def arm_at(self, when: float) -> None:
        """Kill this process at ``when`` on :func:`boottime` (at once if that has passed)."""
        seconds = max(when, 1e-9)
        spec = _ITimerSpec()
        spec.it_value.tv_sec = int(seconds)
        spec.it_value.tv_nsec = max(int((seconds - int(seconds)) * 1e9), 1)
        self._set(spec)

    def disarm(self) -> None:
        """Cancel the kill."""
        self._set(_ITimerSpec())

    def close(self) -> None:
        """Cancel the kill and free the timer."""
        if not self._closed and _libc is not None:
            self._closed = True
            _libc.timer_delete(self._timer_id)

    def _set(self, spec: _ITimerSpec) -> None:
        if self._closed or _libc is None:
            return
        if _libc.timer_settime(self._timer_id, _TIMER_ABSTIME, ctypes.byref(spec), None):
            raise OSError(ctypes.get_errno(), "timer_settime failed")


class Lease:
    """A runner's lease: valid ``duration`` seconds after its last accepted renewal.

    While :meth:`hold` is in force, ``deadline`` (a :class:`KernelDeadline`) kills the process
    when the lease runs out. Thread-safe: the heartbeat thread renews, the loop holds and
    releases.
    """

    def __init__(
        self, duration: float, deadline: KernelDeadline | None, *, renewed_at: float
    ) -> None:
        self.duration = duration
        self._deadline = deadline
        self._renewed_at = renewed_at
        self._held = False
        self._lock = threading.Lock()

    @property
    def fenced(self) -> bool:
        """Whether the kernel enforces this lease."""
        return self._deadline is not None

    @property
    def expires_at(self) -> float:
        """When the lease runs out, on :func:`boottime`."""
        return self._renewed_at + self.duration

    @staticmethod
    def renewing() -> float:
        """Call before sending a renewal; pass the value to :meth:`renewed` once it is stored."""
        return boottime()

    def renewed(self, sent_at: float) -> None:
        """A renewal sent at ``sent_at`` was stored: the lease runs ``duration`` from then."""
        with self._lock:
            if sent_at > self._renewed_at:
                self._renewed_at = sent_at
            if self._held:
                self._arm()

    def hold(self) -> None:
        """The runner holds a run: from now on the kernel ends the process with the lease.

        A lease that has already run out ends the process here, before any handler starts.
        """
        with self._lock:
            self._held = True
            self._arm()

    def release(self) -> None:
        """The runner holds no run any more: an expired lease no longer ends the process."""
        with self._lock:
            self._held = False
            if self._deadline is not None:
                self._deadline.disarm()

    def lost(self) -> None:
        """The overseer took this runner's runs: a run still held must not go on. Ends the
        process at once if a run is held (whether or not the kernel fences the lease)."""
        with self._lock:
            held = self._held
        if held:
            logger.error(
                "this runner's lease was taken while it held a run: ending the process",
                extra={"action": "lease_lost"},
            )
            os.kill(os.getpid(), signal.SIGKILL)

    def close(self) -> None:
        """Release and free the kernel timer."""
        with self._lock:
            self._held = False
            if self._deadline is not None:
                self._deadline.close()

    def _arm(self) -> None:
        if self._deadline is not None:
            self._deadline.arm_at(self.expires_at)


def process_namespace() -> str | None:
    """This process's PID namespace (``pid:[inode]``), or ``None`` where it cannot be read.

    Two processes with the same host name but different PID namespaces (containers sharing
    the host's network) cannot judge each other by PID.
    """
    with contextlib.suppress(OSError):
        return os.readlink("/proc/self/ns/pid")
    return None


FORWARDED_SIGNALS = (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
)
"""Signals the stand-in init passes on to the runner (see :func:`leave_namespace_init`)."""


def leave_namespace_init() -> None:
    """Make sure this process is not PID 1 of its PID namespace; call before any work.

    A namespace's init process (PID 1 in a container whose command is ``celery-taskq
    runner``) ignores every signal it has no handler for, ``SIGKILL`` from its own kernel
    timer included, so its lease could not be fenced. So, as PID 1, the process forks: the
    parent stays behind as a minimal init that passes stop signals on, reaps orphans and
    exits with the runner's status; the child returns from here and is the runner.
    """
    if os.getpid() != 1:
        return
    child = os.fork()
    if child == 0:
        return
    for signum in FORWARDED_SIGNALS:
        signal.signal(signum, lambda received, _frame: os.kill(child, received))
    while True:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            os._exit(1)
        if pid == child:
            code = os.waitstatus_to_exitcode(status)
            os._exit(code if code >= 0 else 128 - code)
