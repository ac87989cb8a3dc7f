"""The source -> decode -> pipeline path: each consumed message through the bus.

A source hands the runner an `Incoming` (its decoded event, or the reason it
could not be decoded); the runner emits the event through the bus's public
API (`Bus.emit`: handlers in order with isolation, then routing of
notification events to sinks) and answers with a `Verdict`. The commit rule:

- ``ack`` only when the emit result says every delivery of the event and of its
  follow-ups was confirmed by its broker or durably spooled (``published``,
  ``spooled``; ``handled`` for a domain event), and its handlers succeeded or
  the source's ``on_error`` is ``ignore``;
- ``redeliver`` when a delivery failed retriably (a sink is down): the broker
  gives the message again, so nothing is lost;
- ``dead_letter`` when the message cannot be decoded, a delivery was refused
  for good, or handlers failed under ``on_error: dead_letter`` (or still failed
  after ``max_attempts`` runs, or ``max_age_s`` after the first, under ``retry``:
  a retry whose pause would end past ``max_age_s`` is not started).

``route: false`` emits the event as a domain event: handlers only.

With ``dedupe`` set, an event whose (``source``, ``id``) was acked within the
window (`bridge.dedupe`) is acked at once without running its handlers again,
counted in ``evbridge_dedupe_dropped_total`` and as outcome ``duplicate``.
"""

from __future__ import annotations

import asyncio
import copy
import logging
from collections.abc import Iterator
from time import monotonic
from typing import Final, Protocol

import msgspec

from bridge import tracing
from bridge.dedupe import Window, key_of
from bridge.event import Event
from bridge.metrics import Metrics
from bridge.results import ERROR, TIMEOUT, EmitResult
from bridge.sinks.toolkit import Backoff
from bridge.sources.base import Incoming, SourceConfig, Verdict
from bridge.sources.traced import traced

log = logging.getLogger("bridge.sources")

_DONE: Final = frozenset({"handled", "published", "spooled"})
_FAILED: Final = frozenset({ERROR, TIMEOUT})
_ACK: Final = Verdict("ack")  # frozen: one for every message that is done
#: Outcomes of ``evbridge_consumed_total{source,outcome}``.
OUTCOMES: Final = (
    "ok", "handler_error_ignored", "redelivered", "dead_letter", "undecodable", "duplicate"
)  # fmt: skip


class Emitter(Protocol):
    """What the runner needs of a bus (`bridge.bus.Bus` is one): its public `emit` and
    its metrics. A protocol, so that sources do not import the bus: the sidecar (or the
    application) hands the bus to them, and events flow source -> bus only."""

    metrics: Metrics

    async def emit(self, event: Event) -> EmitResult: ...


def _all(result: EmitResult) -> Iterator[EmitResult]:
    yield result
    for follow_up in result.follow_ups:
        yield from _all(follow_up)


def _failed_handlers(result: EmitResult) -> list[str]:
    # Plain loops, and no walk of the follow-ups when there are none: this runs per message.
    failed: list[str] = []
    for r in _all(result) if result.follow_ups else (result,):
        for h in r.handlers:
            if h.outcome in _FAILED:
                failed.append(f"{h.name}: {h.outcome}{': ' + h.error if h.error else ''}")
    return failed


def delivery_verdict(result: EmitResult) -> Verdict | None:
    """None when every delivery is done; else what to do with the message."""
    if not result.follow_ups and result.status in _DONE:
        return None  # the common case, without walking the follow-ups
    for r in _all(result):
        if r.status in _DONE:
            continue
        error = r.error
        reason = f"{r.type} {r.id}: {error.code}: {error.message}" if error else r.status
        if error is not None and error.retriable:
            return Verdict("redeliver", reason)
        return Verdict("dead_letter", f"delivery refused: {reason}")
    return None


class Runner:
    """Runs the consumed messages of one source through a bus; see the module docstring."""

    def __init__(self, bus: Emitter, config: SourceConfig) -> None:
        self.bus = bus
        self.config = config
        self.name = config.name
        self._backoff = Backoff(initial_s=config.retry_initial_s, max_s=config.retry_max_s)
        # One child per outcome, made once: a labels() lookup per message cost a tenth
        # of the consume path.
        self._counts = {outcome: bus.metrics.consumed.labels(config.name, outcome)
                        for outcome in OUTCOMES}  # fmt: skip
        self._again = bus.metrics.consumed_again.labels(config.name)
        dedupe = config.dedupe
        self._seen: Window[bool] | None = (
            Window(dedupe.window_s, dedupe.max_entries) if dedupe is not None else None
        )
        self._dropped = bus.metrics.dedupe_dropped.labels(config.name)
        #: Messages being run now: read by the gauge at scrape time (`Gauge.set_function`),
        #: so a message costs an integer's increment, not two locked gauge updates.
        self.inflight = 0
        bus.metrics.source_inflight.labels(config.name).set_function(lambda: self.inflight)

    def _count(self, outcome: str) -> None:
        self._counts[outcome].inc()

    async def deliver(self, incoming: Incoming) -> Verdict:
        """The `Deliver` callback the source is started with."""
        if incoming.redelivered:
            self._again.inc()
        if tracing.TRACER is not None:
            return await traced(self.config, incoming, self._guarded)
        return await self._guarded(incoming)

    async def _guarded(self, incoming: Incoming) -> Verdict:
        self.inflight += 1
        try:
            event = incoming.event
            if event is not None and self._seen is None:
                return await self._handle(incoming, event)  # one frame less per message
            return await self._run(incoming)
        except Exception as exc:
            # Only misuse makes emit raise (a bus not started, stopping): not the message's
            # fault, so it goes back to the broker.
            self._count("redelivered")
            log.warning("source %s: %s: %s: %s; the broker redelivers it", self.name,
                        incoming.where, type(exc).__name__, exc)  # fmt: skip
            return Verdict("redeliver", f"{type(exc).__name__}: {exc}")
        finally:
            self.inflight -= 1

    async def _run(self, incoming: Incoming) -> Verdict:
        if incoming.event is None:
            self._count("undecodable")
            reason = f"undecodable: {incoming.problem}"
            log.warning("source %s: %s is dead-lettered: %s", self.name, incoming.where, reason)
            return Verdict("dead_letter", reason)
        event = incoming.event
        seen = self._seen
        if seen is None:
            return await self._handle(incoming, event)
        # The event as consumed (the bus fills an unset source the same way each time).
        key = key_of(event, "")
        if seen.get(key) is not None:
            self._dropped.inc()
            self._count("duplicate")
            log.debug("source %s: %s: event %s was handled already; acked", self.name,
                      incoming.where, event.id)  # fmt: skip
            return _ACK
        verdict = await self._handle(incoming, event)
        if verdict.action == "ack":
            seen.remember(key, True)
        return verdict

    async def _handle(self, incoming: Incoming, event: Event) -> Verdict:
        if not self.config.route and event.kind != "domain":
            # A copy with only its kind changed, to a valid one: `msgspec.structs.replace`
            # would validate every field again, for a tenth of a no-op handler's cost.
            event = copy.copy(event)
            msgspec.structs.force_setattr(event, "kind", "domain")
        attempts = self.config.max_attempts if self.config.on_error == "retry" else 1
        max_age = self.config.max_age_s
        started = monotonic() if max_age is not None else 0.0
        attempt = 0
        for attempt in range(1, attempts + 1):
            result = await self.bus.emit(event)
            verdict = delivery_verdict(result)
            if verdict is not None:
                outcome = "redelivered" if verdict.action == "redeliver" else "dead_letter"
                self._count(outcome)
                log.warning("source %s: %s: %s (%s)", self.name, incoming.where, verdict.reason,
                            verdict.action)  # fmt: skip
                return verdict
            failed = _failed_handlers(result)
            if not failed:
                self._count("ok")
                return _ACK
            if self.config.on_error == "ignore":
                self._count("handler_error_ignored")
                return _ACK
            if not any(h.retriable for r in _all(result) for h in r.handlers
                       if h.outcome in _FAILED):  # fmt: skip
                break  # only errors that say a rerun cannot help (a 4xx)
            if attempt == attempts:
                break
            pause = self._backoff.delay(attempt)
            if max_age is not None and monotonic() - started + pause > max_age:
                break
            await asyncio.sleep(pause)
        reason = f"handler failed after {attempt} run(s): " + "; ".join(failed)
        self._count("dead_letter")
        log.warning("source %s: %s is dead-lettered: %s", self.name, incoming.where, reason)
        return Verdict("dead_letter", reason)
