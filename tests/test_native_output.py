"""The output capture of native Celery attempts tees: the writes reach the streams as before,
and the run gets a copy of its own thread's writes, and of nothing else."""

from __future__ import annotations

import io
import logging
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from celery.utils.log import LoggingProxy

from celery_taskq.celery.native_output import TeeStream, start_capture
from celery_taskq.core.runner.capture import TRUNCATION_MARKER

CAP = 1024


@contextmanager
def own_streams() -> Iterator[tuple[io.StringIO, io.StringIO]]:
    """sys.stdout and sys.stderr swapped for two StringIOs, then put back."""
    saved = sys.stdout, sys.stderr
    out, err = io.StringIO(), io.StringIO()
    sys.stdout, sys.stderr = out, err
    try:
        yield out, err
    finally:
        sys.stdout, sys.stderr = saved


def test_print_reaches_the_stream_and_the_run() -> None:
    with own_streams() as (out, err):
        # Given a capture open for an attempt
        capture = start_capture(CAP)
        # When the task prints to stdout and stderr
        print("to stdout")
        print("to stderr", file=sys.stderr)
        # Then the streams got the text at once, before the attempt ended
        assert out.getvalue() == "to stdout\n"
        assert err.getvalue() == "to stderr\n"
        # And the run gets the same text
        assert capture.finish() == ("to stdout\n", "to stderr\n")
        # And afterwards sys.stdout and sys.stderr are the very objects they were
        assert sys.stdout is out
        assert sys.stderr is err


def test_output_outside_the_attempt_is_not_kept() -> None:
    with own_streams() as (out, _):
        print("before")
        capture = start_capture(CAP)
        print("during")
        stdout, _ = capture.finish()
        print("after")
        assert stdout == "during\n"
        assert out.getvalue() == "before\nduring\nafter\n"


def test_under_celerys_logging_proxy_the_worker_log_keeps_the_line_and_not_its_own_lines(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a worker with worker_redirect_stdouts: sys.stdout and sys.stderr are Celery's
    # LoggingProxy, and its log handler writes to the real stderr (here a StringIO)
    worker_output = io.StringIO()
    handler = logging.StreamHandler(worker_output)
    handler.setFormatter(logging.Formatter("[%(levelname)s] %(message)s"))
    redirected = logging.getLogger("test.native_output.redirected")
    redirected.addHandler(handler)
    redirected.propagate = False
    worker_logger = logging.getLogger("test.native_output.worker")
    worker_logger.addHandler(handler)
    worker_logger.propagate = False
    worker_logger.setLevel(logging.INFO)
    try:
        proxy = LoggingProxy(redirected, logging.WARNING)
        monkeypatch.setattr(sys, "stdout", proxy)
        monkeypatch.setattr(sys, "stderr", proxy)
        capture = start_capture(CAP)
        # When the task prints, and the worker logs about the task
        print("hello from the task")
        worker_logger.info("Task native.add[1] succeeded in 0.01s: 5")
        stdout, stderr = capture.finish()
    finally:
        redirected.removeHandler(handler)
        worker_logger.removeHandler(handler)
    # Then the worker's output has both lines, as without the capture
    assert worker_output.getvalue() == (
        "[WARNING] hello from the task\n[INFO] Task native.add[1] succeeded in 0.01s: 5\n"
    )
    # And the run has the task's line only
    assert stdout == "hello from the task\n"
    assert stderr == ""
    assert sys.stdout is proxy


def test_each_thread_gets_its_own_output() -> None:
    with own_streams() as (out, _):
        both_started = threading.Barrier(2)
        both_printed = threading.Barrier(2)
        results: dict[str, str] = {}

        def attempt(name: str) -> None:
            capture = start_capture(CAP)
            both_started.wait(timeout=10)
            for index in range(50):
                print(f"{name} {index}")
            both_printed.wait(timeout=10)  # both captures are open while both threads print
            results[name] = capture.finish()[0]

        threads = [threading.Thread(target=attempt, args=(name,)) for name in ("a", "b")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=10)
        for name in ("a", "b"):
            assert results[name] == "".join(f"{name} {index}\n" for index in range(50))
        assert sorted(out.getvalue().splitlines()) == sorted(
            f"{name} {index}" for name in ("a", "b") for index in range(50)
        )
        assert sys.stdout is out


def test_the_capture_keeps_cap_bytes_and_says_how_many_more() -> None:
    with own_streams() as (out, _):
        capture = start_capture(10)
        sys.stdout.write("0123456789abcdef")
        sys.stdout.write("é" * 4)  # 8 bytes in UTF-8
        sys.stdout.write("!")  # a byte that would fit the room left, after a cut: left out
        stdout, _ = capture.finish()
        assert stdout == "0123456789" + TRUNCATION_MARKER.format(omitted=15)
        assert out.getvalue() == "0123456789abcdef" + "é" * 4 + "!"  # the stream got all


def test_a_multibyte_character_is_never_cut_in_half() -> None:
    with own_streams() as _:
        capture = start_capture(5)
        sys.stdout.write("ab" + "é" * 3)  # 2 + 6 bytes: room for "ab", one "é" and half of one
        stdout, _ = capture.finish()
        # The cut-off "é" counts among the bytes left out, so the count stays exact
        assert stdout == "abé" + TRUNCATION_MARKER.format(omitted=4)


def test_what_a_database_cannot_store_is_replaced() -> None:
    with own_streams() as _:
        capture = start_capture(CAP)
        sys.stdout.write("nul\x00 surrogate\udcff end")
        stdout, _ = capture.finish()
        assert stdout == "nul\ufffd surrogate? end"


def test_nested_captures_each_get_what_was_written_while_they_were_open() -> None:
    with own_streams() as (out, _):
        outer = start_capture(CAP)
        print("outer")
        inner = start_capture(CAP)  # an eager task called from inside a task
        print("inner")
        assert inner.finish()[0] == "inner\n"
        print("outer again")
        assert outer.finish()[0] == "outer\ninner\nouter again\n"
        assert sys.stdout is out


def test_a_stream_the_task_replaced_is_left_alone() -> None:
    with own_streams() as _:
        capture = start_capture(CAP)
        own = io.StringIO()
        sys.stdout = own
        print("into its own stream")
        assert capture.finish()[0] == ""
        assert sys.stdout is own
        assert own.getvalue() == "into its own stream\n"


def test_finish_twice_or_from_another_thread_gives_the_same_text() -> None:
    with own_streams() as (out, _):
        capture = start_capture(CAP)
        print("once")
        finished: list[tuple[str, str]] = []
        thread = threading.Thread(target=lambda: finished.append(capture.finish()))
        thread.start()
        thread.join(timeout=10)
        assert finished == [("once\n", "")]
        assert capture.finish() == ("once\n", "")
        print("not kept")
        assert capture.finish() == ("once\n", "")
        assert sys.stdout is out


def test_the_tee_is_the_wrapped_stream_for_everything_but_writing() -> None:
    with own_streams() as (out, _):
        capture = start_capture(CAP)
        try:
            assert isinstance(sys.stdout, TeeStream)
            assert sys.stdout.wrapped is out
            assert sys.stdout.isatty() is False
            sys.stdout.writelines(["a\n", "b\n"])
            sys.stdout.flush()
            assert sys.stdout.getvalue() == "a\nb\n"
        finally:
            stdout, _ = capture.finish()
        assert stdout == "a\nb\n"


@pytest.fixture(autouse=True)
def _no_capture_left_open() -> Iterator[None]:
    yield
    assert not isinstance(sys.stdout, TeeStream)
    assert not isinstance(sys.stderr, TeeStream)
