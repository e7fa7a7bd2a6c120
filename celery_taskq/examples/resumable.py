"""A sample resumable task: counts the primes below a bound, in time-boxed chunks.

Each run works until its deadline (``run.deadline``, from the run time budget, or sooner with
``data["chunk_seconds"]``), then returns ``Continue`` with where it got to; the next run starts
at once from that checkpoint. The last run returns the count.
"""

from __future__ import annotations

import math
import time
from typing import Any

from celery_taskq import Continue, RunContext, TaskHandler


def is_prime(number: int) -> bool:
    """Whether ``number`` is prime (trial division: slow on purpose)."""
    if number < 2:
        return False
    return all(number % d for d in range(2, math.isqrt(number) + 1))


class CountPrimes(TaskHandler):
    """Counts primes below ``data["below"]``; checkpoint ``{"next": n, "found": k}``."""

    def validate(self, data: Any) -> None:
        """``below`` is a whole number from 2 to 10**9; ``chunk_seconds`` a positive number."""
        if not isinstance(data, dict):
            raise ValueError('data must be an object with "below"')
        below = data.get("below")
        if isinstance(below, bool) or not isinstance(below, int) or not 2 <= below <= 10**9:
            raise ValueError('"below" must be a whole number from 2 to 1000000000')
        chunk = data.get("chunk_seconds", 1.0)
        if isinstance(chunk, bool) or not isinstance(chunk, int | float) or chunk <= 0:
            raise ValueError('"chunk_seconds" must be a positive number')

    def handle_task_run(self, run: RunContext) -> Any:
        """Go on from the checkpoint until the chunk's time is up or the count is done."""
        below = run.data["below"]
        state = run.checkpoint or {"next": 2, "found": 0}
        number, found = state["next"], state["found"]
        seconds = min(run.time_left(), float(run.data.get("chunk_seconds", 1.0)))
        ends = time.monotonic() + seconds
        print(f"counting from {number}")
        while number < below:
            if number % 1000 == 0:
                run.set_progress(100 * number / below, status=f"at {number}")
                if time.monotonic() >= ends:
                    print(f"time is up at {number}: {found} primes so far")
                    return Continue({"next": number, "found": found})
            found += is_prime(number)
            number += 1
        print(f"{found} primes below {below}")
        return {"below": below, "primes": found}
