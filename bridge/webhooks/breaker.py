"""A per-endpoint circuit breaker: after N consecutive failures, fail fast for a cool-down.

``closed``: calls go through; each retriable failure counts, a success resets the
count. At ``failures`` in a row it opens: for ``cooldown_s`` every call fails at
once without touching the endpoint (the outcome's error says so). After the
cool-down it is ``half_open``: one trial call goes through (others still fail
fast); its success closes the breaker, its failure opens it for another cool-down.
Only failures that say the endpoint is unwell count (5xx, refused, timeout): a
4xx answer (or an oversized one) means it is up and answering, and counts as a success
here.
"""

from __future__ import annotations

from collections.abc import Callable
from time import monotonic
from typing import Literal

State = Literal["closed", "open", "half_open"]


class Breaker:
    """The breaker of one endpoint; ``clock`` is injectable for tests."""

    __slots__ = ("_clock", "_trial", "cooldown_s", "failures", "last_error", "opened_at", "streak")

    def __init__(
        self, failures: int, cooldown_s: float, *, clock: Callable[[], float] = monotonic
    ) -> None:
        self.failures = failures
        self.cooldown_s = cooldown_s
        self._clock = clock
        #: Consecutive failures so far.
        self.streak = 0
        #: When it last opened; None while closed.
        self.opened_at: float | None = None
        self.last_error: str | None = None
        self._trial = False

    @property
    def state(self) -> State:
        if self.opened_at is None:
            return "closed"
        if self._clock() - self.opened_at < self.cooldown_s:
            return "open"
        return "half_open"

    def refusal(self) -> str | None:
        """None if a call may go now (a half-open breaker lets one trial through); else why not."""
        state = self.state
        if state == "closed":
            return None
        if state == "half_open" and not self._trial:
            self._trial = True
            return None
        assert self.opened_at is not None
        if state == "half_open":
            return "circuit breaker half-open: a trial call is in flight; failing fast"
        left = self.cooldown_s - (self._clock() - self.opened_at)
        return (
            f"circuit breaker open after {self.streak} consecutive failures "
            f"(last: {self.last_error}); failing fast for another {left:.1f}s"
        )

    def succeeded(self) -> None:
        self.streak = 0
        self.opened_at = None
        self._trial = False

    def failed(self, error: str) -> None:
        self.streak += 1
        self.last_error = error
        if self._trial or self.streak >= self.failures:
            self.opened_at = self._clock()
        self._trial = False

    def released(self) -> None:
        """A call that proved nothing (cancelled) ended: the trial slot is free again."""
        self._trial = False
