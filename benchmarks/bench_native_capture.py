"""Per-attempt cost of capturing a native Celery task's output: the tee against descriptors.

    .venv/bin/python benchmarks/bench_native_capture.py [--attempts N] [--prints P]

Each attempt opens a capture, writes ``P`` lines with ``print()`` (0 for the cost of the
capture alone) and closes it, as the audit does around one task execution. Measured in one
process, side by side:

``none``
    the same prints with no capture (the floor).
``tee``
    ``celery_taskq.celery.native_output.start_capture`` (what the native audit uses): Python-
    level tee objects on ``sys.stdout``/``sys.stderr``, a copy per thread.
``fd``
    ``celery_taskq.core.runner.capture.capture_output`` (what handler runs use): descriptors 1
    and 2 pointed at in-memory files.

``sys.stdout`` is an in-memory stream during the measurement, as it is a ``LoggingProxy`` in
a worker; with the ``fd`` capture the prints go to the spool files instead.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from celery_taskq.celery.native_output import start_capture
from celery_taskq.core.runner.capture import capture_output

CAP = 1024 * 1024


def attempt_none(prints: int) -> None:
    """An attempt's prints without capture."""
    for index in range(prints):
        print("line", index)


def attempt_tee(prints: int) -> None:
    """An attempt's prints under the tee capture."""
    capture = start_capture(CAP)
    for index in range(prints):
        print("line", index)
    capture.finish()


def attempt_fd(prints: int) -> None:
    """An attempt's prints under the descriptor capture."""
    with capture_output(CAP):
        for index in range(prints):
            print("line", index)


def per_attempt_us(attempt: Callable[[int], None], attempts: int, prints: int) -> float:
    """Microseconds per attempt, the median of five rounds."""
    rounds = []
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(attempts):
            attempt(prints)
        rounds.append((time.perf_counter() - started) / attempts * 1e6)
    return statistics.median(rounds)


def main() -> None:
    """Print the per-attempt cost of each way, for the given prints per attempt."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--attempts", type=int, default=5000)
    parser.add_argument("--prints", type=int, nargs="*", default=[0, 1, 10])
    options = parser.parse_args()
    report = sys.__stdout__ or sys.stdout
    saved = sys.stdout, sys.stderr
    print("| prints per attempt | none (µs) | tee (µs) | fd (µs) |", file=report)
    print("| --- | --- | --- | --- |", file=report)
    for prints in options.prints:
        figures = []
        for attempt in (attempt_none, attempt_tee, attempt_fd):
            sys.stdout, sys.stderr = io.StringIO(), io.StringIO()
            try:
                figures.append(per_attempt_us(attempt, options.attempts, prints))
            finally:
                sys.stdout, sys.stderr = saved
        cells = " | ".join(f"{value:.1f}" for value in figures)
        print(f"| {prints} | {cells} |", file=report)


if __name__ == "__main__":
    main()
