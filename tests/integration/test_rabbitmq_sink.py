"""The RabbitMQ sink against the real broker: format, per-event failures, concurrency, faults.

Each test declares its own exchange and durable queue (``unique_name``). Fault tests put a
``TcpProxy`` between the sink and the broker, so they never disturb other users of the
shared broker; the broker-restart test is in test_rabbitmq_restart.py.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aio_pika
import aiormq
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from yarl import URL

from bridge.errors import SinkError, SinkRejected, SinkUnavailable, Unencodable
from bridge.event import Event
from bridge.results import Delivery
from bridge.sinks import rabbitmq as rabbitmq_sink
from bridge.sinks.base import Outgoing
from bridge.sinks.rabbitmq import RabbitConfig, RabbitRoute, RabbitSink
from bridge.sinks.rabbitmq import _aiormq as rabbitmq_internals
from bridge.sinks.rabbitmq import link as rabbitmq_link
from bridge.sinks.rabbitmq import message as rabbitmq_message
from tests.brokers import LOCALHOST, RabbitMQ, TcpProxy, unique_name, wait_until
from tests.contract.target_rabbitmq import get_messages

SinkFactory = Callable[..., Awaitable[RabbitSink]]


class Destination:
    """A durable topic exchange with one durable queue bound by ``binding``."""

    def __init__(self, exchange: aio_pika.abc.AbstractExchange, queue: aio_pika.abc.AbstractQueue):
        self.exchange = exchange
        self.queue = queue
        self.name = exchange.name


@pytest.fixture
async def amqp(rabbitmq: RabbitMQ) -> AsyncIterator[aio_pika.abc.AbstractChannel]:
    """A channel on the test's own connection, for setup and reading back."""
    async with await aio_pika.connect(rabbitmq.url) as connection:
        yield await connection.channel()


@contextlib.asynccontextmanager
async def destination(
    channel: aio_pika.abc.AbstractChannel,
    binding: str = "#",
    queue_arguments: dict[str, Any] | None = None,
) -> AsyncIterator[Destination]:
    name = unique_name("rmq-sink")
    exchange = await channel.declare_exchange(name, aio_pika.ExchangeType.TOPIC, durable=True)
    queue = await channel.declare_queue(name, durable=True, arguments=queue_arguments)
    await queue.bind(exchange, routing_key=binding)
    try:
        yield Destination(exchange, queue)
    finally:
        await queue.delete(if_unused=False, if_empty=False)
        await exchange.delete()


@pytest.fixture
async def dest(amqp: aio_pika.abc.AbstractChannel) -> AsyncIterator[Destination]:
    async with destination(amqp) as found:
        yield found


@pytest.fixture(params=["batched", "per-message"])
async def make_sink(
    rabbitmq: RabbitMQ, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[SinkFactory]:
    """``await make_sink(exchange=..., **config)``: a started sink, stopped at teardown.

    Every test runs with both write paths: batched frames (aiormq internals) and the
    portable one ``basic_publish`` call per message.
    """
    if request.param == "per-message":
        monkeypatch.setattr(rabbitmq_internals, "fast_path", lambda _channel: False)
    sinks: list[RabbitSink] = []

    async def make(**fields: Any) -> RabbitSink:
        fields.setdefault("url", rabbitmq.url)
        sink = RabbitSink(RabbitConfig(name="rmq", type="rabbitmq", **fields))
        sinks.append(sink)
        await sink.start()
        return sink

    yield make
    for sink in sinks:
        await sink.stop()


def item(
    type_: str = "order.created",
    *,
    exchange: str | None = None,
    routing_key: str | None = None,
    key: str | None = None,
    **fields: Any,
) -> Outgoing:
    event = Event(type=type_, source="/tests", data=fields.pop("data", {"n": 1}), **fields)
    route = RabbitRoute(exchange=exchange, routing_key=routing_key or type_)
    return Outgoing(event, "r", route, key)


async def test_properties_headers_and_body_arrive(
    make_sink: SinkFactory, dest: Destination
) -> None:
    sink = await make_sink(exchange=dest.name)
    out = item(
        "invite.accepted",
        routing_key="invites.accepted.eu",
        key="user-7",
        data={"invite": 7, "text": "é✓"},
        subject="invite/7",
        correlation_id="corr-1",
        ttl_ms=600_000,
        time="2026-11-05T10:20:30Z",
        headers={
            "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "x-a": "b",
        },
    )
    [result] = await sink.publish_many([out])
    assert result == Delivery("rmq", dest.name, routing_key="invites.accepted.eu")

    [message] = await get_messages(dest.queue, 1)
    event = out.event
    assert message.routing_key == "invites.accepted.eu"
    assert message.exchange == dest.name
    assert message.body == '{"invite":7,"text":"é✓"}'.encode()
    assert message.message_id == event.id
    assert message.type == "invite.accepted"
    assert message.app_id == "/tests"
    assert message.content_type == "application/json"
    assert message.correlation_id == "corr-1"
    assert message.expiration == 600.0  # aio-pika reports it in seconds
    assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert message.timestamp is not None
    assert message.timestamp.isoformat().startswith("2026-11-05T10:20:30")
    assert message.headers == {
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "x-a": "b",
        "cloudEvents:specversion": "1.0",
        "cloudEvents:id": event.id,
        "cloudEvents:source": "/tests",
        "cloudEvents:type": "invite.accepted",
        "cloudEvents:time": "2026-11-05T10:20:30Z",
        "cloudEvents:subject": "invite/7",
        "cloudEvents:partitionkey": "user-7",
        "cloudEvents:correlationid": "corr-1",
        "cloudEvents:ttl": "600000",
    }


async def test_persistent_off_sends_transient_messages(
    make_sink: SinkFactory, dest: Destination
) -> None:
    sink = await make_sink(exchange=dest.name, persistent=False)
    assert all(isinstance(r, Delivery) for r in await sink.publish_many([item()]))
    [message] = await get_messages(dest.queue, 1)
    assert message.delivery_mode == aio_pika.DeliveryMode.NOT_PERSISTENT


async def test_declares_the_exchange_durable_at_start(
    make_sink: SinkFactory, amqp: aio_pika.abc.AbstractChannel
) -> None:
    name = unique_name("rmq-declared")
    sink = await make_sink(exchange=name, exchange_type="direct")
    try:
        assert (await sink.healthcheck()).ok
        # Redeclaring with the same settings is accepted: durable direct exchange.
        await amqp.declare_exchange(name, aio_pika.ExchangeType.DIRECT, durable=True)
    finally:
        await amqp.exchange_delete(name)


async def test_without_declare_a_missing_exchange_is_unhealthy_and_rejects(
    make_sink: SinkFactory,
) -> None:
    name = unique_name("rmq-missing")
    sink = await make_sink(exchange=name, declare=False)
    health = await sink.healthcheck()
    assert not health.ok
    assert "does not exist" in health.detail
    [result] = await sink.publish_many([item()])
    assert isinstance(result, SinkRejected)
    assert (result.code, result.retriable) == ("exchange_not_found", False)


async def test_unroutable_fails_that_event_alone(make_sink: SinkFactory, amqp: Any) -> None:
    async with destination(amqp, binding="bound.#") as dest:
        sink = await make_sink(exchange=dest.name)
        items = [item("bound.a"), item("nowhere.b"), item("bound.c"), item("nowhere.d")]
        results = await sink.publish_many(items)
        assert isinstance(results[0], Delivery)
        assert isinstance(results[2], Delivery)
        for failed in (results[1], results[3]):
            assert isinstance(failed, SinkRejected)
            assert (failed.code, failed.retriable) == ("unroutable", False)
            assert dest.name in failed.message
        got = await get_messages(dest.queue, 2)
        assert [m.message_id for m in got] == [items[0].event.id, items[2].event.id]
        # The channel is still good: the next batch goes through.
        assert isinstance((await sink.publish_many([item("bound.e")]))[0], Delivery)


async def test_mandatory_off_lets_the_broker_drop_unroutable_events(
    make_sink: SinkFactory, amqp: Any
) -> None:
    async with destination(amqp, binding="bound.#") as dest:
        sink = await make_sink(exchange=dest.name, mandatory=False)
        [result] = await sink.publish_many([item("nowhere.a")])
        assert isinstance(result, Delivery)


async def test_same_event_twice_in_flight_gets_both_outcomes_right(
    make_sink: SinkFactory, amqp: Any
) -> None:
    # aio-pika matches a basic.return to its publish by message id: the sink must never
    # have one id in flight twice on a channel, or a return is blamed on the wrong publish.
    async with destination(amqp, binding="bound.#") as dest:
        sink = await make_sink(exchange=dest.name, channels=1)
        event = Event(type="dup", source="/tests")
        routable = Outgoing(event, "r", RabbitRoute(routing_key="bound.x"), None)
        unroutable = Outgoing(event, "r", RabbitRoute(routing_key="nowhere.x"), None)
        results = await sink.publish_many([routable, unroutable, routable, unroutable])
        assert [type(r) for r in results] == [Delivery, SinkRejected, Delivery, SinkRejected]
        assert len(await get_messages(dest.queue, 2)) == 2


async def test_nack_fails_that_event_alone_and_is_retriable(
    make_sink: SinkFactory, amqp: Any
) -> None:
    arguments = {"x-max-length": 2, "x-overflow": "reject-publish"}
    async with destination(amqp, queue_arguments=arguments) as dest:
        sink = await make_sink(exchange=dest.name, channels=1)
        results = await sink.publish_many([item() for _ in range(4)])
        assert [type(r) for r in results] == [Delivery, Delivery, SinkError, SinkError]
        for nacked in results[2:]:
            assert isinstance(nacked, SinkError)
            assert (nacked.code, nacked.retriable) == ("nacked", True)


async def test_missing_route_exchange_fails_those_events_and_spares_the_channel(
    make_sink: SinkFactory, dest: Destination
) -> None:
    sink = await make_sink(exchange=dest.name, channels=1)
    ghost = unique_name("rmq-ghost")
    items = [item(), item(exchange=ghost), item(), item(exchange=ghost)]
    results = await sink.publish_many(items)
    assert [type(r) for r in results] == [Delivery, SinkRejected, Delivery, SinkRejected]
    assert {r.code for r in results if isinstance(r, SinkRejected)} == {"exchange_not_found"}
    assert len(await get_messages(dest.queue, 2)) == 2
    assert all(isinstance(r, Delivery) for r in await sink.publish_many([item(), item()]))


async def test_exchange_deleted_under_the_sink_fails_those_events_alone(
    make_sink: SinkFactory, amqp: aio_pika.abc.AbstractChannel, dest: Destination
) -> None:
    sink = await make_sink(exchange=dest.name, channels=1, mandatory=False)
    other = unique_name("rmq-other")
    await amqp.declare_exchange(other, aio_pika.ExchangeType.TOPIC)
    assert isinstance((await sink.publish_many([item(exchange=other)]))[0], Delivery)
    await amqp.exchange_delete(other)
    # The sink still believes `other` exists: the broker closes the channel (404) under
    # the whole call. That event fails alone; its neighbours go out on a new channel.
    neighbours = [item(), item(exchange=other), item()]
    results = await sink.publish_many(neighbours)
    assert [type(r) for r in results] == [Delivery, SinkRejected, Delivery]
    gone = results[1]
    assert isinstance(gone, SinkRejected)
    assert (gone.code, gone.retriable) == ("exchange_not_found", False)
    await read_ids(dest.queue, {neighbours[0].event.id, neighbours[2].event.id})
    [again] = await sink.publish_many([item(exchange=other)])
    assert isinstance(again, SinkRejected)
    assert again.code == "exchange_not_found"
    assert isinstance((await sink.publish_many([item()]))[0], Delivery)


async def read_ids(
    queue: aio_pika.abc.AbstractQueue, wanted: set[str], timeout: float = 15.0
) -> list[str]:
    """Consume until every id in ``wanted`` arrived; all ids read, in order (a neighbour
    of a publish that closed the channel may arrive twice: at-least-once)."""
    seen: list[str] = []
    try:
        async with asyncio.timeout(timeout), queue.iterator() as messages:
            async for message in messages:
                await message.ack()
                seen.append(message.message_id or "")
                if wanted <= set(seen):
                    break
    except TimeoutError:
        missing = wanted - set(seen)
        raise AssertionError(f"{len(missing)} of {len(wanted)} never arrived") from None
    return seen


def broker_refuses_ttl(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let a ttl_ms beyond RabbitMQ's limit reach the broker, as a message the sink could
    not foresee would: the broker closes the channel (PRECONDITION_FAILED)."""
    monkeypatch.setattr(rabbitmq_message, "MAX_EXPIRATION_MS", 2**63 - 1)


POISON_TTL = 2**63 - 1


async def test_a_message_that_closes_the_channel_fails_alone(
    make_sink: SinkFactory,
    dest: Destination,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    broker_refuses_ttl(monkeypatch)
    sink = await make_sink(exchange=dest.name, channels=1)
    first = [item(ttl_ms=POISON_TTL if i in (3, 7) else None) for i in range(12)]
    # A second call shares the channel: the close must not fail its events either.
    second = [item() for _ in range(5)]
    results, others = await asyncio.gather(sink.publish_many(first), sink.publish_many(second))
    for i, result in enumerate(results):
        if i in (3, 7):
            assert isinstance(result, SinkRejected), result
            assert (result.code, result.retriable) == ("broker_refused", False)
            assert "invalid expiration" in result.message
        else:
            assert isinstance(result, Delivery), (i, result)
    assert all(isinstance(r, Delivery) for r in others), others
    good = {o.event.id for o in first + second if o.event.ttl_ms is None}
    seen = await read_ids(dest.queue, good)
    assert not set(seen) - good
    # The pool's channel was reopened: the next call goes through as usual.
    assert isinstance((await sink.publish_many([item()]))[0], Delivery)


async def test_a_ttl_beyond_rabbitmq_limit_is_refused_before_sending(
    make_sink: SinkFactory, dest: Destination
) -> None:
    sink = await make_sink(exchange=dest.name, channels=1)
    items = [item(), item(ttl_ms=rabbitmq_sink.MAX_EXPIRATION_MS + 1), item()]
    results = await sink.publish_many(items)
    assert [type(r) for r in results] == [Delivery, SinkRejected, Delivery]
    assert isinstance(results[1], SinkRejected)
    assert (results[1].code, results[1].field) == ("invalid_ttl", "ttl_ms")
    at_limit = item(ttl_ms=rabbitmq_sink.MAX_EXPIRATION_MS)
    assert isinstance((await sink.publish_many([at_limit]))[0], Delivery)
    received = await get_messages(dest.queue, 3)
    assert [m.message_id for m in received] == [
        items[0].event.id,
        items[2].event.id,
        at_limit.event.id,
    ]


async def test_data_that_cannot_be_encoded_fails_that_event_alone(
    make_sink: SinkFactory, dest: Destination
) -> None:
    sink = await make_sink(exchange=dest.name)
    items = [item(), item(data={"x": msgspec.msgpack.Ext(5, b"raw")}), item()]
    results = await sink.publish_many(items)
    assert [type(r) for r in results] == [Delivery, Unencodable, Delivery]
    assert isinstance(results[1], Unencodable)
    assert (results[1].retriable, results[1].field) == (False, "data")
    received = await get_messages(dest.queue, 2)
    assert [m.message_id for m in received] == [items[0].event.id, items[2].event.id]


POISONS = ("good", "good", "good", "closes_channel", "unencodable", "too_long_key", "ttl")


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    kinds=st.lists(st.sampled_from(POISONS), min_size=1, max_size=40), channels=st.integers(1, 2)
)
def test_random_poison_in_a_batch_fails_alone(
    rabbitmq: RabbitMQ, monkeypatch: pytest.MonkeyPatch, kinds: list[str], channels: int
) -> None:
    """Whatever mix of poison a batch holds, each poison event gets its own non-retriable
    error and every other event is confirmed and arrives."""
    broker_refuses_ttl(monkeypatch)

    def make(i: int, kind: str) -> Outgoing:
        if kind == "closes_channel":
            return item(ttl_ms=POISON_TTL)
        if kind == "unencodable":
            return item(data=[msgspec.msgpack.Ext(1, b"")])
        if kind == "too_long_key":
            return item(routing_key="k" * 256)
        if kind == "ttl":
            return item(ttl_ms=60_000)
        return item(data={"n": i})

    async def run() -> None:
        async with (
            await aio_pika.connect(rabbitmq.url) as connection,
            destination(await connection.channel()) as dest,
        ):
            sink = RabbitSink(
                RabbitConfig(
                    name="rmq",
                    type="rabbitmq",
                    url=rabbitmq.url,
                    exchange=dest.name,
                    channels=channels,
                )
            )
            await sink.start()
            try:
                items = [make(i, kind) for i, kind in enumerate(kinds)]
                results = await sink.publish_many(items)
                good: set[str] = set()
                for kind, out, result in zip(kinds, items, results, strict=True):
                    if kind in ("good", "ttl"):
                        assert isinstance(result, Delivery), (kind, result)
                        good.add(out.event.id)
                    else:
                        assert isinstance(result, SinkError), (kind, result)
                        assert not result.retriable, (kind, result)
                if good:
                    seen = await read_ids(dest.queue, good)
                    assert set(seen) == good
            finally:
                await sink.stop()

    asyncio.run(run())


async def test_values_amqp_cannot_carry_fail_per_event(
    make_sink: SinkFactory, dest: Destination
) -> None:
    sink = await make_sink(exchange=dest.name)
    results = await sink.publish_many([item(routing_key="k" * 256), item()])
    assert isinstance(results[0], SinkRejected)
    assert results[0].code == "too_long"
    assert isinstance(results[1], Delivery)


async def test_many_confirms_in_flight_bounded_per_channel(
    make_sink: SinkFactory, dest: Destination, monkeypatch: pytest.MonkeyPatch
) -> None:
    peak: dict[int, int] = {}
    track = rabbitmq_link.Slot.track

    def tracking(slot: rabbitmq_link.Slot, message_id: str, confirm: Any) -> None:
        track(slot, message_id, confirm)
        peak[id(slot)] = max(peak.get(id(slot), 0), slot.inflight)

    monkeypatch.setattr(rabbitmq_link.Slot, "track", tracking)
    sink = await make_sink(exchange=dest.name, channels=3, max_inflight=16)
    batches = [[item(key=f"b{b}") for _ in range(40)] for b in range(12)]
    results = await asyncio.gather(*(sink.publish_many(batch) for batch in batches))
    assert all(isinstance(r, Delivery) for batch in results for r in batch)
    assert len(peak) == 3, "every channel of the pool was used"
    # Many confirms awaited at once on each channel, never more than the bound.
    assert set(peak.values()) == {16}
    assert len(await get_messages(dest.queue, 480, timeout=30)) == 480


async def test_batch_order_is_kept(make_sink: SinkFactory, dest: Destination) -> None:
    sink = await make_sink(exchange=dest.name, channels=4, max_inflight=8)
    items = [item(data={"i": i}) for i in range(100)]
    assert all(isinstance(r, Delivery) for r in await sink.publish_many(items))
    got = await get_messages(dest.queue, 100)
    assert [m.message_id for m in got] == [i.event.id for i in items]


# --- faults, through a TCP proxy -------------------------------------------------------


@pytest.fixture
async def proxy(rabbitmq: RabbitMQ) -> AsyncIterator[TcpProxy]:
    """A proxy in front of the broker: faults for this test's sink only."""
    async with TcpProxy(LOCALHOST, URL(rabbitmq.url).port or 5672) as found:
        yield found


def proxied(proxy: TcpProxy) -> str:
    return f"amqp://guest:guest@{LOCALHOST}:{proxy.port}/"


async def publish_until_delivered(sink: RabbitSink, out: Outgoing, timeout: float) -> None:
    async def delivered() -> bool:
        [result] = await sink.publish_many([out])
        assert isinstance(result, Delivery | SinkUnavailable), result
        return isinstance(result, Delivery)

    await wait_until(delivered, timeout=timeout, what="a publish to succeed", interval=0.1)


async def test_broker_unreachable_at_start_then_connects_by_itself(
    make_sink: SinkFactory, dest: Destination, proxy: TcpProxy
) -> None:
    await proxy.refuse()
    loop = asyncio.get_running_loop()
    began = loop.time()
    sink = await make_sink(url=proxied(proxy), exchange=dest.name, reconnect_max_s=0.2)
    assert loop.time() - began < 2
    assert not (await sink.healthcheck()).ok
    began = loop.time()
    [result] = await sink.publish_many([item()])
    assert loop.time() - began < 0.1, "publishing while down must fail fast"
    assert isinstance(result, SinkUnavailable)
    assert result.retriable

    await proxy.accept()
    await wait_until(lambda: sink.connected, timeout=10, what="the sink to connect")
    assert (await sink.healthcheck()).ok
    assert isinstance((await sink.publish_many([item()]))[0], Delivery)
    assert len(await get_messages(dest.queue, 1)) == 1


async def test_dropped_connection_fails_retriably_then_reconnects(
    make_sink: SinkFactory, dest: Destination, proxy: TcpProxy
) -> None:
    sink = await make_sink(url=proxied(proxy), exchange=dest.name, reconnect_max_s=0.2)
    assert isinstance((await sink.publish_many([item()]))[0], Delivery)
    await proxy.refuse()
    await proxy.cut()
    await wait_until(lambda: not sink.connected, timeout=5, what="the sink to notice")
    results = await sink.publish_many([item(), item()])
    assert all(isinstance(r, SinkUnavailable) and r.retriable for r in results)
    assert not (await sink.healthcheck()).ok

    await proxy.accept()
    await publish_until_delivered(sink, item(), timeout=10)
    assert (await sink.healthcheck()).ok
    assert len(await get_messages(dest.queue, 2)) == 2


async def test_health_check_times_out_on_a_silent_broker(
    make_sink: SinkFactory, dest: Destination, proxy: TcpProxy
) -> None:
    sink = await make_sink(url=proxied(proxy), exchange=dest.name, health_timeout_s=0.3)
    assert (await sink.healthcheck()).ok
    await proxy.blackhole()
    loop = asyncio.get_running_loop()
    began = loop.time()
    health = await sink.healthcheck()
    assert not health.ok
    assert "no answer" in health.detail
    assert loop.time() - began < 1.5
    await proxy.accept()
    await wait_until(
        lambda: _healthy(sink), timeout=10, what="the health check to pass again", interval=0.1
    )
    assert isinstance((await sink.publish_many([item()]))[0], Delivery)


async def test_cancelled_publish_gives_its_room_back(
    make_sink: SinkFactory, dest: Destination, proxy: TcpProxy
) -> None:
    sink = await make_sink(url=proxied(proxy), exchange=dest.name, channels=1, max_inflight=4)
    await proxy.blackhole()
    batch = [item() for _ in range(6)]
    publishing = asyncio.ensure_future(sink.publish_many(batch))
    await wait_until(lambda: sink.pending_confirms == 4, timeout=5, what="4 unconfirmed publishes")
    publishing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await publishing
    await wait_until(lambda: sink.pending_confirms == 0, timeout=5, what="the room to come back")
    await proxy.accept()
    results = await sink.publish_many([item() for _ in range(10)])  # more than max_inflight
    assert all(isinstance(r, Delivery) for r in results)


async def _healthy(sink: RabbitSink) -> bool:
    return (await sink.healthcheck()).ok


async def test_installed_aiormq_takes_the_batched_path(amqp: aio_pika.abc.AbstractChannel) -> None:
    # The batched write relies on aiormq internals (checked at runtime, with a portable
    # fallback); this fails when an aiormq upgrade silently moves us to the slow path.
    channel = await amqp.get_underlay_channel()
    assert isinstance(channel, aiormq.Channel)
    assert rabbitmq_internals.fast_path(channel)
