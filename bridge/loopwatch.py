"""Event-loop lag watchdog: detects a handler that blocks the loop and names it.

A heartbeat timer on the loop records when it last ran, and
``evbridge_event_loop_lag_seconds`` is the worst lag seen in the last
`HOLD_S` seconds (a stall shows on the next scrapes, not only for the 50 ms
until the next heartbeat overwrites it). A daemon thread looks
at that heartbeat: when it is older than ``warn_after_s``, the loop is blocked
*now*, so the thread reads which task the loop is running and, through the
pipeline's slots, which handler. One warning per stall, naming the handler,
and one ``errors_total{stage="handler",error_type="loop_blocked"}``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from time import monotonic
from typing import Final

from bridge.metrics import METRICS, Metrics
from bridge.pipeline import Watchdog

log = logging.getLogger("bridge.loopwatch")

INTERVAL_S: Final = 0.05
#: How long the lag gauge keeps showing a peak: longer than a usual scrape interval.
HOLD_S: Final = 60.0
_INF: Final = float("inf")


class LoopWatch:
    """Measures loop lag on the loop; spots stalls from a thread."""

    def __init__(
        self, watchdog: Watchdog, *, warn_after_s: float, metrics: Metrics = METRICS
    ) -> None:
        self._metrics = metrics
        self._watchdog = watchdog
        self._warn_after = warn_after_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._beat = monotonic()
        self._expected = self._beat
        self.stalls = 0
        self.max_lag = 0.0
        self._held = 0.0
        self._held_at = self._beat

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop.clear()
        self._beat = self._expected = monotonic()
        self._schedule()
        self._thread = threading.Thread(target=self._watch, name="evbridge-loopwatch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._thread is not None:
            self._thread.join(timeout=1.0)
            self._thread = None

    def _schedule(self) -> None:
        assert self._loop is not None
        self._expected = monotonic() + INTERVAL_S
        self._timer = self._loop.call_later(INTERVAL_S, self._heartbeat)

    def _heartbeat(self) -> None:
        now = monotonic()
        lag = max(0.0, now - self._expected)
        self.max_lag = max(self.max_lag, lag)
        if lag >= self._held or now - self._held_at >= HOLD_S:
            self._held, self._held_at = lag, now
            self._metrics.loop_lag.set(lag)
        self._beat = now
        self._schedule()

    def _running_handler(self) -> str:
        loop = self._loop
        # Read from another thread on purpose: a racy read of which task the
        # loop is in is the only way to name a handler while it still blocks.
        task = asyncio.tasks._current_tasks.get(loop)  # type: ignore[attr-defined]
        for _ in range(3):
            try:
                slots = list(self._watchdog.slots)
            except RuntimeError:  # the set changed size while we copied it
                continue
            for slot in slots:
                # A finite deadline means the slot's handler is running right now.
                if slot.task is task and slot.handler is not None and slot.deadline != _INF:
                    return slot.handler.name
            break
        return "(no handler: the bridge itself or a sink)"

    def _watch(self) -> None:
        warned_for = -1.0
        while not self._stop.wait(INTERVAL_S):
            beat = self._beat
            stalled = monotonic() - beat
            if stalled >= self._warn_after and beat != warned_for:
                warned_for = beat
                self.stalls += 1
                name = self._running_handler()
                log.warning(
                    "the event loop has been blocked for %.3fs, running handler %s; "
                    "a handler must not block: use `async def` with awaits, or plain `def` "
                    "(runs in a thread)",
                    stalled,
                    name,
                )
                self._metrics.error("handler", "loop_blocked")
