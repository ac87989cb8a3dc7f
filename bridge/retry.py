"""When the deliverer tries a spooled event again, and when it gives up on it.

`RetryPolicy` reads ``delivery.retry``: an exponential backoff with jitter
between attempts, and a limit in attempts and in age after which the event is
dead-lettered (`bridge.deadletter`).
"""

from __future__ import annotations

import random

from bridge.config import RetryConfig


class RetryPolicy:
    """Backoff and give-up rules from ``delivery.retry``."""

    def __init__(self, config: RetryConfig, rng: random.Random | None = None) -> None:
        self.config = config
        self._random = rng or random.Random()

    def delay(self, attempts: int) -> float:
        """Seconds before attempt ``attempts + 1``: half the exponential step, plus up to
        as much again at random (so failed events of many keys do not retry in lockstep)."""
        step = min(self.config.max_s, self.config.initial_s * 2.0 ** max(0, attempts - 1))
        return step / 2 + self._random.uniform(0, step / 2)

    def exhausted(self, attempts: int, accepted_ns: int, now_ns: int) -> str | None:
        """Why to give up after ``attempts`` failed attempts, or None to retry."""
        limit = self.config.max_attempts
        if limit is not None and attempts >= limit:
            return f"gave up after {attempts} attempts"
        max_age = self.config.max_age_s
        if max_age is not None and accepted_ns and (now_ns - accepted_ns) / 1e9 >= max_age:
            return f"gave up after {(now_ns - accepted_ns) / 1e9:.0f}s (max_age_s {max_age:g})"
        return None
