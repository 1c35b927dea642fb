"""The queue-delay signal admission control watches."""

from __future__ import annotations

import pytest

from service.api.pipeline import QueueDelay


def test_the_mean_follows_recent_waits():
    delay = QueueDelay(weight=0.5, memory_s=10)
    for _ in range(20):
        delay.observe(2.0, now=1.0)
    assert delay.current(now=1.0) == pytest.approx(2.0, rel=1e-5)
    for _ in range(20):
        delay.observe(0.0, now=2.0)
    assert delay.current(now=2.0) < 1e-5


def test_a_quiet_pool_forgets_its_old_waits():
    # After a burst, no work may start at all (everything is being shed); the signal must
    # not keep the server refusing forever on stale evidence.
    delay = QueueDelay(weight=1.0, memory_s=1.0)
    delay.observe(5.0, now=100.0)
    assert delay.current(now=100.5) == 5.0
    assert delay.current(now=101.5) == 0.0


def test_nothing_observed_means_no_delay():
    assert QueueDelay().current() == 0.0


def test_after_a_quiet_spell_the_first_wait_is_the_whole_story():
    delay = QueueDelay(weight=0.1, memory_s=1.0)
    delay.observe(5.0, now=0.0)
    delay.observe(0.01, now=3.0)
    assert delay.current(now=3.0) == pytest.approx(0.01)
