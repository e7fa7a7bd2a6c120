"""The retry backoff policy."""

from __future__ import annotations

import pytest

from celery_taskq.core.runner.backoff import Backoff


def test_delay_doubles_then_is_capped() -> None:
    backoff = Backoff(base=2.0, maximum=30.0, jitter=0.0)
    assert [backoff.delay(n) for n in range(1, 7)] == [2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert backoff.delay(0) == 0.0
    assert backoff.delay(10_000) == 30.0


@pytest.mark.parametrize(("rand", "expected"), [(0.0, 9.0), (0.5, 10.0), (1.0, 11.0)])
def test_jitter_spreads_the_delay_both_ways(rand: float, expected: float) -> None:
    assert Backoff(base=10.0, maximum=100.0, jitter=0.1).delay(
        1, rand=lambda: rand
    ) == pytest.approx(expected)


def test_zero_base_means_no_backoff() -> None:
    assert Backoff(base=0.0, maximum=100.0, jitter=0.5).delay(3) == 0.0
