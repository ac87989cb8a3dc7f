"""What the sources' broker-restart tests share: an in-process sidecar consuming one
source, and the scenario each broker's test runs (tests/integration/test_sources_restart_*.py).

The scenario: a backlog of ``n`` messages (body ``{"n": i}``) waits on the test's own broker;
the sidecar starts draining it; with events in flight (their handlers held) the broker is
taken down, the handlers finish while it is away (so their acks cannot go), and it is
brought back up. The source must notice (``evbridge_source_up`` 0, ``/readyz`` names the
source), reconnect by itself (gauge 1, ready again) and finish the backlog: every message
handled at least once, and every extra handling counted in
``evbridge_consumed_redeliveries_total``.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from bridge import Bus, Context, Event, parse_config
from bridge.handlers import HandlerRegistry
from bridge.metrics import Metrics
from bridge.server.state import Sidecar
from tests.brokers import wait_until

SOURCE = "in"
#: Bounds each wait of the scenario; a passing run takes a fraction of it.
TIMEOUT = 20.0


class Consumer:
    """A sidecar (in-process: its readiness is what ``/readyz`` answers) with one source
    named ``in`` and one handler that counts every message it handles by its index."""

    def __init__(self, source: dict[str, Any]) -> None:
        fields = {"name": SOURCE, "route": False, "grace_s": 0.5, **source}
        raw = {"sources": [fields], "handlers": {"entry_points": False}}
        config = parse_config(raw, {})
        self.bus = Bus(config, registry=HandlerRegistry(), metrics=Metrics())
        self.sidecar = Sidecar(config, self.bus)
        self.handled: Counter[int] = Counter()
        #: Once ``hold_after`` messages were handled, handler runs wait for `gate` (counted in
        #: ``held``): they are the events in flight when the broker goes down.
        self.hold_after = 20
        self.gate = asyncio.Event()
        self.held = 0

        async def handler(event: Event, ctx: Context) -> None:
            if len(self.handled) >= self.hold_after and not self.gate.is_set():
                self.held += 1
                await self.gate.wait()
            assert isinstance(event.data, dict)
            self.handled[int(event.data["n"])] += 1

        self.bus.subscribe("*", handler, name="count", timeout=30)

    def up(self) -> float:
        return self.bus.metrics.source_up.labels(SOURCE)._value.get()  # type: ignore[attr-defined,no-any-return]

    def inflight(self) -> float:
        return self.bus.metrics.source_inflight.labels(SOURCE)._value.get()  # type: ignore[attr-defined,no-any-return]

    def redeliveries(self) -> float:
        return self.bus.metrics.consumed_again.labels(SOURCE)._value.get()  # type: ignore[attr-defined,no-any-return]

    async def not_ready_because_of_the_source(self) -> bool:
        ready, body = await self.sidecar.readiness()
        reasons = body.get("not_ready", [])
        return not ready and any(r.startswith(f"source {SOURCE}:") for r in reasons)

    async def ready(self) -> bool:
        ready, _ = await self.sidecar.readiness()
        return ready


async def restart_under_backlog(
    consumer: Consumer,
    n: int,
    take_down: Callable[[], Awaitable[None]],
    bring_up: Callable[[], Awaitable[None]],
    settled: Callable[[], Awaitable[bool]],
    *,
    in_flight_comes_again: bool = True,
) -> None:
    """Run the scenario of the module docstring on a started ``consumer``. ``settled`` asks
    the broker whether every message is acknowledged (nothing ready, nothing unacked).
    ``in_flight_comes_again``: the broker hands out again what was in flight at the outage
    (RabbitMQ, JetStream); a Kafka consumer that rejoins may commit it instead."""
    await wait_until(consumer.ready, timeout=TIMEOUT, what="the sidecar to be ready")
    await wait_until(lambda: consumer.held > 0, timeout=TIMEOUT, what="draining to begin")
    await take_down()
    await wait_until(lambda: consumer.up() == 0, timeout=TIMEOUT, what="evbridge_source_up 0")
    await wait_until(
        consumer.not_ready_because_of_the_source, timeout=TIMEOUT, what="/readyz to name it"
    )
    at_outage = len(consumer.handled)
    assert at_outage < n, "the backlog was drained before the broker went down"
    consumer.gate.set()  # their handlers finish while the broker is away: not settled

    await bring_up()
    await wait_until(lambda: consumer.up() == 1, timeout=TIMEOUT, what="evbridge_source_up 1")
    await wait_until(consumer.ready, timeout=TIMEOUT, what="ready again")
    await wait_until(
        lambda: len(consumer.handled) == n,
        timeout=TIMEOUT,
        what=f"all {n} messages handled (had {len(consumer.handled)}; {at_outage} at the outage)",
    )
    assert set(consumer.handled) == set(range(n)), "a message was lost"
    # What was in flight at the outage comes again (JetStream: after its ack wait).
    await wait_until(settled, timeout=TIMEOUT, what="the broker to hold nothing unacked")
    extra = sum(consumer.handled.values()) - n
    # A message handled twice came back as a redelivery, and was counted as one.
    least = max(extra, 1) if in_flight_comes_again else extra
    assert consumer.redeliveries() >= least, (extra, consumer.redeliveries())
