"""The one backoff policy: exponential steps, capped, with jitter.

Used for reconnecting to a broker (`Supervisor`) and for retrying delivery.
"""

from __future__ import annotations

import random

import msgspec


class Backoff(msgspec.Struct, frozen=True, kw_only=True):
    """Delays that double from ``initial_s`` up to ``max_s``.

    ``delay(n)`` is the wait before attempt ``n + 1`` after ``n`` failures:
    half the exponential step plus up to as much again at random, so many
    clients (or many failed events) do not retry in lockstep.
    """

    initial_s: float = 0.1
    max_s: float = 5.0

    def __post_init__(self) -> None:
        # initial_s above max_s is allowed (every step is then max_s), as
        # delivery.retry has always allowed it.
        if not (self.initial_s > 0 and self.max_s > 0):
            raise ValueError(
                f"backoff needs initial_s and max_s above 0 (got {self.initial_s:g}, "
                f"{self.max_s:g})"
            )

    def step(self, failures: int) -> float:
        """The exponential step (no jitter) after ``failures`` failures (>= 1)."""
        exponent = min(max(0, failures - 1), 64)  # 2**64 steps is past any cap
        return float(min(self.max_s, self.initial_s * 2.0**exponent))

    def delay(self, failures: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after ``failures`` failures, jittered in [step/2, step]."""
        step = self.step(failures)
        return step / 2 + (rng or random).uniform(0, step / 2)
