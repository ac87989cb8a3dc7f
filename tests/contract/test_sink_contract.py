"""The contract every sink honours, run against each target in conftest.TARGETS."""

from __future__ import annotations

import asyncio

import msgspec

from bridge.errors import SinkError, Unencodable
from bridge.event import Event, data_bytes
from bridge.results import Delivery
from bridge.sinks.base import Outgoing, RouteOptions
from tests.contract.target import ContractTarget


def outgoing(
    route: RouteOptions, n: int, *, key: str | None = None, prefix: str = "e"
) -> list[Outgoing]:
    return [
        Outgoing(
            Event(type=f"contract.{prefix}", data={"n": i, "text": "é✓"}, source="test", key=key),
            "contract",
            route,
            key,
        )
        for i in range(n)
    ]


async def test_one_delivery_per_event_in_order(target: ContractTarget) -> None:
    route = target.route()
    items = outgoing(route, 5, key="k1")
    results = await target.sink.publish_many(items)
    assert len(results) == 5
    assert all(isinstance(r, Delivery) for r in results), results
    assert {r.sink for r in results if isinstance(r, Delivery)} == {target.sink.name}
    received = await target.read(route, 5)
    assert [r.id for r in received] == [i.event.id for i in items]
    assert [r.data for r in received] == [data_bytes(i.event) for i in items]
    assert {r.key for r in received} == {"k1"}


async def test_offsets_increase_within_a_destination(target: ContractTarget) -> None:
    """Every event is confirmed into the one destination, and reads back in publish order;
    a sink that reports positions (``offset``, or JetStream's ``seq``) reports increasing
    ones, and one that does not (``positions = False``: RabbitMQ) claims none."""
    route = target.route()
    items = outgoing(route, 3, key="same")
    results = await target.sink.publish_many(items)
    assert all(isinstance(r, Delivery) for r in results), results
    deliveries = [r for r in results if isinstance(r, Delivery)]
    assert len({d.destination for d in deliveries}) == 1, deliveries
    positions = [d.offset if d.offset is not None else d.seq for d in deliveries]
    if getattr(target, "positions", True):
        assert None not in positions, deliveries
        assert positions == sorted(positions), positions
        assert len(set(positions)) == 3, positions
    else:
        assert positions == [None] * 3, deliveries
    assert [r.id for r in await target.read(route, 3)] == [i.event.id for i in items]


async def test_bytes_data_round_trips(target: ContractTarget) -> None:
    route = target.route()
    payload = bytes(range(256))
    event = Event(
        type="contract.bytes", data=payload, datacontenttype="application/octet-stream", source="t"
    )
    [result] = await target.sink.publish_many([Outgoing(event, "contract", route, None)])
    assert isinstance(result, Delivery)
    [received] = await target.read(route, 1)
    assert received.data == payload
    assert received.id == event.id


async def test_concurrent_calls_each_get_their_results(target: ContractTarget) -> None:
    route = target.route()
    batches = [outgoing(route, 4, prefix=f"c{b}") for b in range(5)]
    results = await asyncio.gather(*(target.sink.publish_many(b) for b in batches))
    assert [len(r) for r in results] == [4] * 5
    assert all(isinstance(d, Delivery) for r in results for d in r)
    received = await target.read(route, 20)
    assert sorted(r.id for r in received) == sorted(i.event.id for b in batches for i in b)


async def test_an_event_that_cannot_be_encoded_fails_alone(target: ContractTarget) -> None:
    """Data JSON cannot hold (a handler can build any object) fails that event, not its
    neighbours: a non-retriable error, so the spool dead-letters it instead of retrying."""
    if not getattr(target, "encodes", True):
        return  # the memory sink keeps event objects as they are
    route = target.route()
    items = outgoing(route, 7, key="k")
    for i in (1, 5):
        poison = msgspec.structs.replace(items[i].event, data={"x": msgspec.msgpack.Ext(3, b"")})
        items[i] = Outgoing(poison, "contract", route, "k")
    results = await target.sink.publish_many(items)
    for i, result in enumerate(results):
        if i in (1, 5):
            assert isinstance(result, Unencodable), result
            assert not result.retriable
        else:
            assert isinstance(result, Delivery), (i, result)
    good = [o.event.id for i, o in enumerate(items) if i not in (1, 5)]
    assert [r.id for r in await target.read(route, 5)] == good


async def test_healthy_after_start(target: ContractTarget) -> None:
    health = await target.sink.healthcheck()
    assert health.ok, health.detail


async def test_after_stop_publish_fails_per_event_instead_of_raising(
    target: ContractTarget,
) -> None:
    """After `stop()` a broker sink fails each event retriably (it has no connection) and is
    unhealthy; the memory sink (``works_stopped = True``) still keeps every event."""
    route = target.route()
    await target.sink.stop()
    items = outgoing(route, 2)
    try:
        results = await target.sink.publish_many(items)
    except SinkError:  # pragma: no cover - the contract forbids this
        raise AssertionError("publish_many raised instead of returning per-event errors") from None
    assert len(results) == 2
    if getattr(target, "works_stopped", False):
        assert all(isinstance(r, Delivery) for r in results), results
        assert [r.id for r in await target.read(route, 2)] == [i.event.id for i in items]
    else:
        assert all(isinstance(r, SinkError) and r.retriable for r in results), results
    health = await target.sink.healthcheck()
    assert not health.ok
    await target.sink.start()  # the fixture stops it again
