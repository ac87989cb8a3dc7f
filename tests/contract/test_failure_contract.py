"""The failure contract: how every broker sink behaves when things go wrong.

Beside the happy-path contract (test_sink_contract.py), each broker sink
passes these against a broker the test owns (see failure_target.py):

- broker down at start: `start()` returns, publishes fail at once and
  retriably, health is not ok; when the broker comes, the sink recovers by
  itself;
- broker lost mid-run and back: the same, without restarting the sink;
- a message too large for the broker, and a destination that does not
  exist: that event fails alone, not retriably, the others are delivered;
- credentials refused: health is not ok and says so, publishes fail at once
  with code ``unauthorized`` (a target whose broker cannot check credentials
  marks the case not applicable, with the reason, and it is skipped);
- `stop()` with events in flight: every event gets an outcome.

FAILURE_TARGETS lists the sinks that run it; a sink joins with a
``failure_<name>`` fixture.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from bridge.errors import SinkError
from bridge.event import Event
from bridge.results import Delivery
from bridge.sinks.base import Outgoing, RouteOptions, Sink
from tests.brokers import wait_until
from tests.contract.failure_kafka import failure_kafka_noida, failure_kafka_tansu
from tests.contract.failure_nats import failure_nats
from tests.contract.failure_rabbitmq import failure_rabbitmq, small_message_rabbitmq_node
from tests.contract.failure_target import FailureTarget

__all__ = [
    "failure_kafka_noida",
    "failure_kafka_tansu",
    "failure_nats",
    "failure_rabbitmq",
    "small_message_rabbitmq_node",
]

FAILURE_TARGETS = ["nats", "kafka_tansu", "kafka_noida", "rabbitmq"]
#: "At once": a publish while the broker is away returns within this, not after a timeout.
FAST_S = 0.5
RECOVER_S = 20.0


@pytest.fixture(params=FAILURE_TARGETS)
def failure(request: pytest.FixtureRequest) -> FailureTarget:
    found: FailureTarget = request.getfixturevalue(f"failure_{request.param}")
    return found


def items(route: RouteOptions, n: int, *, data: object = None) -> list[Outgoing]:
    return [
        Outgoing(Event(type="failure.e", data={"n": i} if data is None else data), "r", route, None)
        for i in range(n)
    ]


async def timed(sink: Sink, batch: Sequence[Outgoing]) -> tuple[list[Delivery | SinkError], float]:
    loop = asyncio.get_running_loop()
    began = loop.time()
    results = await sink.publish_many(batch)
    return results, loop.time() - began


async def fails_fast_retriably(sink: Sink, route: RouteOptions) -> None:
    results, took = await timed(sink, items(route, 3))
    assert took < FAST_S, f"a publish while down took {took:.2f}s"
    assert all(isinstance(r, SinkError) and r.retriable for r in results), results
    assert not (await sink.healthcheck()).ok


async def delivers(sink: Sink, route: RouteOptions) -> bool:
    [result] = await sink.publish_many(items(route, 1))
    return isinstance(result, Delivery)


async def test_broker_down_at_start_fails_fast_then_recovers(failure: FailureTarget) -> None:
    sink = failure.sink()
    loop = asyncio.get_running_loop()
    began = loop.time()
    await sink.start()
    try:
        assert loop.time() - began < 5.0
        await fails_fast_retriably(sink, failure.route())
        await failure.start_broker()
        await wait_until(
            lambda: delivers(sink, failure.route()), timeout=RECOVER_S, what="recovery"
        )
        assert (await sink.healthcheck()).ok
    finally:
        await sink.stop()


async def test_broker_lost_mid_run_and_back(failure: FailureTarget) -> None:
    await failure.start_broker()
    sink = failure.sink()
    await sink.start()
    try:
        assert await delivers(sink, failure.route())
        failure.stop_broker()

        async def down() -> bool:
            results = await sink.publish_many(items(failure.route(), 1))
            return all(isinstance(r, SinkError) for r in results)

        await wait_until(down, timeout=RECOVER_S, what="publishes to fail")
        await fails_fast_retriably(sink, failure.route())
        await failure.start_broker()
        await wait_until(
            lambda: delivers(sink, failure.route()), timeout=RECOVER_S, what="recovery"
        )
        assert (await sink.healthcheck()).ok
    finally:
        await sink.stop()


async def test_too_large_and_missing_destination_fail_alone_and_finally(
    failure: FailureTarget,
) -> None:
    await failure.start_broker()
    sink = failure.sink()
    await sink.start()
    try:
        route = failure.route()
        big = Outgoing(Event(type="failure.big", data="x" * (failure.too_large_bytes + 1)), "r",
                       route, None)  # fmt: skip
        lost = items(failure.missing_route(), 1)[0]
        good = items(route, 2)
        results = await sink.publish_many([good[0], big, lost, good[1]])
        assert isinstance(results[0], Delivery)
        assert isinstance(results[3], Delivery)
        too_large, missing = results[1], results[2]
        assert isinstance(too_large, SinkError)
        assert (too_large.code, too_large.retriable, too_large.field) == (
            "message_too_large", False, "data"
        )  # fmt: skip
        assert isinstance(missing, SinkError)
        assert not missing.retriable, missing
    finally:
        await sink.stop()


async def test_refused_credentials_fail_fast_and_say_so(failure: FailureTarget) -> None:
    reason = failure.not_applicable.get("credentials_refused")
    if reason is not None:
        pytest.skip(f"not applicable: {reason}")
    await failure.start_broker()
    sink = failure.refused_sink()
    await sink.start()
    try:
        results, took = await timed(sink, items(failure.route(), 2))
        assert took < FAST_S
        assert all(isinstance(r, SinkError) and r.code == "unauthorized" for r in results), results
        health = await sink.healthcheck()
        assert not health.ok
        assert "refused" in health.detail
    finally:
        await sink.stop()


async def test_stop_with_events_in_flight_gives_each_an_outcome(failure: FailureTarget) -> None:
    await failure.start_broker()
    sink = failure.sink()
    await sink.start()
    batch = items(failure.route(), 200)
    async with asyncio.timeout(RECOVER_S):
        results, _ = await asyncio.gather(sink.publish_many(batch), sink.stop())
    assert len(results) == len(batch)
    assert all(isinstance(r, Delivery | SinkError) for r in results)
    assert all(r.retriable for r in results if isinstance(r, SinkError)), results
