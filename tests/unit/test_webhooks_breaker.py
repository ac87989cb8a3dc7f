"""The endpoint circuit breaker: opens after N consecutive failures, one trial after the
cool-down, closed again by its success."""

from __future__ import annotations

from bridge.webhooks.breaker import Breaker


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_opens_after_consecutive_failures_and_a_success_resets_the_count() -> None:
    clock = Clock()
    breaker = Breaker(3, 10.0, clock=clock)
    breaker.failed("500")
    breaker.failed("500")
    breaker.succeeded()
    breaker.failed("500")
    breaker.failed("500")
    assert breaker.state == "closed"
    assert breaker.refusal() is None
    breaker.failed("refused")
    assert breaker.state == "open"
    refusal = breaker.refusal()
    assert refusal is not None
    assert refusal.startswith("circuit breaker open after 3 consecutive failures (last: refused)")
    assert "another 10.0s" in refusal


def test_after_the_cooldown_one_trial_goes_and_its_success_closes_it() -> None:
    clock = Clock()
    breaker = Breaker(1, 5.0, clock=clock)
    breaker.failed("timeout")
    clock.now += 5.0
    assert breaker.state == "half_open"
    assert breaker.refusal() is None
    second = breaker.refusal()
    assert second is not None
    assert "trial call is in flight" in second
    breaker.succeeded()
    assert breaker.state == "closed"
    assert breaker.streak == 0


def test_a_failed_trial_opens_it_for_another_cooldown() -> None:
    clock = Clock()
    breaker = Breaker(2, 5.0, clock=clock)
    breaker.failed("a")
    breaker.failed("b")
    clock.now += 6.0
    assert breaker.refusal() is None
    breaker.failed("c")
    assert breaker.state == "open"
    clock.now += 4.9
    assert breaker.refusal() is not None
    clock.now += 0.2
    assert breaker.refusal() is None


def test_a_cancelled_trial_frees_the_trial_slot() -> None:
    clock = Clock()
    breaker = Breaker(1, 1.0, clock=clock)
    breaker.failed("a")
    clock.now += 1.0
    assert breaker.refusal() is None
    breaker.released()
    assert breaker.refusal() is None
