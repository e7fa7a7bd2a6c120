"""File-descriptor level capture of stdout and stderr."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from celery_taskq.core.runner.capture import (
    SPOOL_TRIM_INTERVAL,
    SPOOL_TRIM_SLACK,
    TRUNCATION_MARKER,
    capture_output,
)


def test_captures_python_fd_writes_and_child_processes() -> None:
    with capture_output(cap=1024) as captured:
        print("from print")
        print("to stderr", file=sys.stderr)
        os.write(1, b"raw fd write\n")
        subprocess.run(["sh", "-c", "echo from-child; echo child-err >&2"], check=True)
        subprocess.run(
            [sys.executable, "-c", "import subprocess; subprocess.run(['echo', 'grandchild'])"],
            check=True,
        )
    assert captured.stdout.splitlines() == [
        "from print",
        "raw fd write",
        "from-child",
        "grandchild",
    ]
    assert captured.stderr.splitlines() == ["to stderr", "child-err"]
    assert captured.truncated == {}


def test_each_stream_is_capped_and_the_cut_is_marked() -> None:
    with capture_output(cap=100) as captured:
        os.write(1, b"a" * 1000)
        os.write(2, b"b" * 50)
    assert captured.stdout.startswith("a" * 100)
    assert "output truncated, 900 more bytes not kept" in captured.stdout
    assert captured.stderr == "b" * 50
    assert captured.truncated == {"stdout": 900}


def test_binary_and_nul_bytes_are_kept_as_replacement_characters() -> None:
    with capture_output(cap=100) as captured:
        os.write(1, b"ok\xff\x00end")
    assert captured.stdout == "ok\ufffd\ufffdend"


def test_streams_are_restored_afterwards(capfd: object) -> None:
    with capture_output(cap=100):
        print("inside")
    print("outside")
    out, _ = capfd.readouterr()  # type: ignore[attr-defined]
    assert "outside" in out
    assert "inside" not in out


def test_a_flood_of_output_holds_no_more_than_the_cap_while_it_is_written() -> None:
    cap = 1024 * 1024
    chunk = b"x" * cap
    flood = 256
    with capture_output(cap=cap) as captured:
        # Given a handler that writes 256 MiB to its stdout
        for _ in range(flood):
            os.write(1, chunk)
        # Then, while the run still works, its spool holds about the cap, not 256 MiB
        deadline = time.monotonic() + 10
        while os.fstat(1).st_blocks * 512 > cap + SPOOL_TRIM_SLACK:
            assert time.monotonic() < deadline, "the spool was never trimmed"
            time.sleep(SPOOL_TRIM_INTERVAL)
        assert os.fstat(1).st_size == flood * cap  # the size still counts every byte
    # And what is kept is the first cap bytes, with the exact count of those cut
    assert captured.truncated == {"stdout": (flood - 1) * cap}
    assert captured.stdout.startswith("x" * cap)
    assert captured.stdout.endswith(TRUNCATION_MARKER.format(omitted=(flood - 1) * cap))
