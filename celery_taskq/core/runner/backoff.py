"""Retry backoff: how long a failed task waits before its next run (a pure policy).

The delay grows exponentially with the task's consecutive failures, is capped, and is spread
by a random jitter so that tasks failing together do not retry together. It is applied by
moving the task's ``ScheduledOn``, never by sleeping.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    """Delay = ``base * 2 ** (failures - 1)``, at most ``maximum``, then ± ``jitter`` of itself."""

    base: float
    maximum: float
    jitter: float

    def delay(self, failures: int, rand: Callable[[], float] = random.random) -> float:
        """Seconds to wait after the ``failures``-th consecutive failure (1 for the first)."""
        if failures < 1 or self.base <= 0:
            return 0.0
        exponent = min(failures - 1, 62)  # 2**62 s is already far past any maximum
        delay = min(self.maximum, self.base * 2.0**exponent)
        return max(0.0, delay * (1.0 + self.jitter * (2.0 * rand() - 1.0)))
