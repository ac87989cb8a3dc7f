"""The connection supervisor: one owner for a sink's broker connection.

A sink says how to connect (a coroutine returning a `Link`) and how to tell a
refused connection from an unreachable broker; the supervisor does the rest,
the same way for every broker:

- ``start()`` makes the first attempt and waits for it at most
  ``connect_timeout_s`` (plus a second of slack). A broker that is away does
  not fail the start; the sink is then down and keeps trying.
- While down, `current()` returns the error to fail with (a retriable
  `SinkUnavailable` unless the sink's ``classify`` said otherwise), so
  publishes fail at once instead of waiting on a dead socket.
- When the link reports it is lost, the supervisor closes it and reconnects
  with the shared `Backoff`.
- Every ``probe_interval_s`` (and at once when a sink calls `suspect`) it
  probes the link, bounded by ``health_timeout_s``; a probe that fails marks
  the sink down while keeping the link, and probing continues with backoff
  until the broker answers again.
- Each change of state is logged once (not once per retry), counted in
  ``evbridge_errors{stage="connect"}`` when it is a failure, and shown in the
  ``evbridge_sink_up{sink}`` gauge (``evbridge_source_up{source}`` for a source's
  connection, ``role="source"``), in the `Metrics` given (or bound with
  `Supervisor.bind_metrics` before ``start``: the bus's, for a bus's sink).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Final, Generic, Literal, Protocol, TypeVar

import msgspec
from prometheus_client import Gauge

from bridge.errors import SinkError, SinkUnavailable
from bridge.metrics import METRICS, Metrics
from bridge.sinks.base import Health
from bridge.sinks.toolkit.backoff import Backoff
from bridge.sinks.toolkit.describe import describe
from bridge.sinks.toolkit.tasks import TaskGroup

#: Extra time `Supervisor.start` allows beyond ``connect_timeout_s`` for the first attempt.
START_SLACK_S = 1.0
#: The first pause between reconnection attempts (`Supervision.for_broker`).
RECONNECT_FIRST_S: Final = 0.1


class Link(Protocol):
    """One established connection to a broker, as a sink made it."""

    async def lost(self) -> str:
        """Wait until the connection is gone for good; return why (for the log)."""
        ...

    async def probe(self) -> None:
        """A cheap round trip to the broker; raise if it does not answer properly."""
        ...

    async def close(self) -> None:
        """Close the connection. Must not raise, and should bound its own wait."""
        ...


L = TypeVar("L", bound=Link)


class Supervision(msgspec.Struct, frozen=True, kw_only=True):
    """The supervisor's knobs, in seconds (a sink converts its own config fields)."""

    connect_timeout_s: float = 5.0
    health_timeout_s: float = 2.0
    probe_interval_s: float = 5.0
    backoff: Backoff = Backoff()
    #: After this many probes in a row failed, drop the link and reconnect (a
    #: half-open connection never reports itself lost). ``None`` keeps the link
    #: for a client that reconnects underneath by itself (aiokafka).
    max_failed_probes: int | None = None

    @classmethod
    def for_broker(
        cls,
        *,
        connect_timeout_s: float,
        health_timeout_s: float,
        probe_interval_s: float,
        reconnect_max_s: float,
        max_failed_probes: int | None,
    ) -> Supervision:
        """The knobs from a broker config's fields, the same way for every broker:
        reconnects back off from `RECONNECT_FIRST_S` (or ``reconnect_max_s`` if that
        is lower) doubling up to ``reconnect_max_s``."""
        return cls(
            connect_timeout_s=connect_timeout_s,
            health_timeout_s=health_timeout_s,
            probe_interval_s=probe_interval_s,
            backoff=Backoff(
                initial_s=min(RECONNECT_FIRST_S, reconnect_max_s), max_s=reconnect_max_s
            ),
            max_failed_probes=max_failed_probes,
        )


def unavailable(exc: BaseException, message: str) -> SinkError:
    """The default classification: any connect failure is retriable."""
    return SinkUnavailable(message)


class Supervisor(Generic[L]):
    """Owns one sink's connection; see the module docstring for the behaviour."""

    def __init__(
        self,
        sink: str,
        kind: str,
        target: str,
        connect: Callable[[], Awaitable[L]],
        policy: Supervision,
        *,
        classify: Callable[[BaseException, str], SinkError] = unavailable,
        log: logging.Logger | None = None,
        metrics: Metrics = METRICS,
        role: Literal["sink", "source"] = "sink",
    ) -> None:
        self.sink = sink
        self.kind = kind
        self.target = target  # where it connects, as logs may show it (no secrets)
        self.policy = policy
        self._connect = connect
        self._classify = classify
        self._log = log or logging.getLogger(f"bridge.sinks.{kind}")
        self._metrics = metrics
        #: What log lines and errors call it: "nats sink events", "nats source orders".
        self.role = role
        # The gauge's series is made by `start`, in the metrics bound by then: made here,
        # it would also reset the series of another bus's sink of the same name.
        self._gauge: Gauge | None = None
        self._link: L | None = None
        self._error: SinkError | None = SinkUnavailable(f"{kind} {role} {sink!r} is not started")
        self._logged: Literal["up", "down"] | None = None
        self._tasks: TaskGroup | None = None
        self._wake = asyncio.Event()
        self._first = asyncio.Event()

    # --- what sinks read on every call --------------------------------------

    @property
    def up(self) -> bool:
        return self._error is None

    def current(self) -> L | SinkError:
        """The live link, or the error every publish should fail with right now."""
        if self._error is None and self._link is not None:
            return self._link
        return self._error or SinkUnavailable(
            f"{self.kind} {self.role} {self.sink!r} is not connected"
        )

    def suspect(self) -> None:
        """A publish failed in a way that may mean the broker is gone: probe now."""
        self._wake.set()

    # --- lifecycle ----------------------------------------------------------

    def bind_metrics(self, metrics: Metrics) -> None:
        """Count in ``metrics`` (the bus's) instead; before `start` (a sink's
        `bridge.sinks.base.MetricsAware.bind_metrics` forwards here)."""
        if self._tasks is not None:
            raise RuntimeError(f"{self.kind} sink {self.sink!r}: metrics bound after start")
        self._metrics = metrics

    async def start(self) -> None:
        """Start supervising; return after the first connect attempt (bounded)."""
        if self._tasks is not None:
            return
        metrics = self._metrics
        self._gauge = (metrics.source_up if self.role == "source" else metrics.sink_up).labels(
            self.sink
        )
        self._gauge.set(0)
        self._tasks = TaskGroup(
            f"{self.kind} {self.role} {self.sink}", self._log, metrics=self._metrics
        )
        self._first.clear()
        run = self._tasks.spawn(self._run(), name="supervisor")
        first = asyncio.ensure_future(self._first.wait())
        try:
            await asyncio.wait(
                [first, run],
                timeout=self.policy.connect_timeout_s + START_SLACK_S,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            first.cancel()

    async def stop(self) -> None:
        """Stop reconnecting and probing, and close the link. Idempotent."""
        tasks, self._tasks = self._tasks, None
        if tasks is None:
            return
        await tasks.close()
        self._error = SinkUnavailable(f"{self.kind} {self.role} {self.sink!r} is stopped")
        self._show(0)
        self._logged = None
        self._log.info("%s %s %s stopped", self.kind, self.role, self.sink)

    async def health(self) -> Health:
        """Probe the link now (bounded by ``health_timeout_s``) and update the state."""
        link = self._link
        if link is None:
            assert self._error is not None
            return Health(ok=False, detail=self._error.message)
        problem = await self._probe(link)
        if self._link is not link:  # reconnected or stopped while probing
            return self._health_now()
        if problem is None:
            self._mark_up(link)
            return Health(ok=True, detail=f"connected to {self.target}")
        self._mark_down(SinkUnavailable(problem))
        self._wake.set()  # the watch loop switches to probing with backoff
        return Health(ok=False, detail=problem)

    def _health_now(self) -> Health:
        error = self._error
        if error is None:
            return Health(ok=True, detail=f"connected to {self.target}")
        return Health(ok=False, detail=error.message)

    # --- the loop -----------------------------------------------------------

    async def _run(self) -> None:
        failures = 0
        while True:
            try:
                async with asyncio.timeout(self.policy.connect_timeout_s):
                    link = await self._connect()
            except Exception as exc:  # CancelledError (stop) passes through
                failures += 1
                message = f"cannot connect to {self.target}: {describe(exc)}"
                self._mark_down(self._classify(exc, message))
                self._first.set()
                await asyncio.sleep(self.policy.backoff.delay(failures))
                continue
            failures = 0
            self._link = link
            try:
                self._mark_up(link)
                self._first.set()
                why = await self._watch(link)
                self._mark_down(SinkUnavailable(f"lost the connection to {self.target}: {why}"))
            finally:
                self._link = None
                await link.close()

    async def _watch(self, link: L) -> str:
        """Probe ``link`` until it reports itself lost; return why it was lost."""
        lost = asyncio.ensure_future(link.lost())
        failures = 0
        try:
            while True:
                if self._error is None:
                    wait, failures = self.policy.probe_interval_s, 0
                else:
                    wait = self.policy.backoff.delay(max(failures, 1))
                self._wake.clear()
                woken = asyncio.ensure_future(self._wake.wait())
                try:
                    await asyncio.wait(
                        [lost, woken], timeout=wait, return_when=asyncio.FIRST_COMPLETED
                    )
                finally:
                    woken.cancel()
                if lost.done():
                    return lost.result()
                problem = await self._probe(link)
                if problem is None:
                    self._mark_up(link)
                    continue
                failures += 1
                self._mark_down(SinkUnavailable(problem))
                limit = self.policy.max_failed_probes
                if limit is not None and failures >= limit:
                    return f"{failures} probes in a row failed ({problem})"
        finally:
            lost.cancel()

    async def _probe(self, link: L) -> str | None:
        timeout = self.policy.health_timeout_s
        try:
            async with asyncio.timeout(timeout):
                await link.probe()
        except TimeoutError:
            return f"no answer from {self.target} in {timeout:g}s"
        except Exception as exc:
            return f"{self.target} does not answer: {describe(exc)}"
        return None

    # --- state changes --------------------------------------------------------

    def _show(self, up: int) -> None:
        if self._gauge is not None:  # None before the first start
            self._gauge.set(up)

    def _mark_up(self, link: L) -> None:
        if self._link is not link:
            return
        self._error = None
        self._show(1)
        if self._logged != "up":
            self._logged = "up"
            self._log.info(
                "%s %s %s is connected to %s", self.kind, self.role, self.sink, self.target
            )

    def _mark_down(self, error: SinkError) -> None:
        self._error = error
        self._show(0)
        if self._logged != "down":
            self._logged = "down"
            self._metrics.error("connect", error.code)
            self._log.warning(
                "%s %s %s is down: %s; failing fast and retrying in the background",
                self.kind, self.role, self.sink, error.message,
            )  # fmt: skip
        else:
            self._log.debug(
                "%s %s %s is still down: %s", self.kind, self.role, self.sink, error.message
            )
