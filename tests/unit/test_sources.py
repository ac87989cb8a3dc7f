"""Sources without a broker: config, decoding (the sinks' bindings read back), the runner."""

from __future__ import annotations

import asyncio
import functools
import logging
from pathlib import Path
from typing import Any
from unittest.mock import ANY

import msgspec
import pytest

from bridge import Bus, Context, Event, parse_config
from bridge.errors import ConfigError
from bridge.event import data_bytes
from bridge.handlers import HandlerRegistry
from bridge.metrics import Metrics
from bridge.sinks.base import Health
from bridge.sinks.kafka.message import Codec
from bridge.sinks.memory import MemorySink
from bridge.sinks.nats.message import nats_headers
from bridge.sinks.rabbitmq.message import amqp_properties, structured_body
from bridge.sinks.toolkit import TaskGroup
from bridge.sources import Sources
from bridge.sources.base import Incoming, Verdict
from bridge.sources.decode import Undecodable, plain_event
from bridge.sources.kafka import KafkaSource, KafkaSourceConfig
from bridge.sources.kafka.flow import Flow
from bridge.sources.kafka.message import kafka_event
from bridge.sources.nats import NatsSourceConfig
from bridge.sources.nats.message import nats_event
from bridge.sources.rabbitmq import RabbitSourceConfig
from bridge.sources.rabbitmq.message import amqp_event
from bridge.sources.runner import Runner
from tests.brokers import wait_until
from tests.unit.test_kafka_source_flow import FakeConsumer

RABBIT = {"name": "in", "type": "rabbitmq", "queue": "orders"}
NATS = {"name": "js", "type": "nats", "stream": "S", "durable": "d"}


def config(*sources: dict[str, Any], **extra: Any) -> Any:
    return parse_config(
        {"sources": list(sources), "handlers": {"entry_points": False}, **extra}, {}
    )


def full_event(**overrides: Any) -> Event:
    fields: dict[str, Any] = {
        "type": "order.created",
        "source": "shop/orders",
        "subject": "order-7",
        "data": {"id": 7, "items": ["a", "b"]},
        "key": "customer-3",
        "correlation_id": "corr-1",
        "dataschema": "https://example.com/order.json",
        "ttl_ms": 60000,
        "extensions": {"tenant": "acme"},
        "headers": {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
        **overrides,
    }
    return Event(**fields)


# --- config -----------------------------------------------------------------


def test_sources_parse_beside_sinks() -> None:
    parsed = config(RABBIT, NATS)
    rabbit, nats = parsed.sources
    assert isinstance(rabbit, RabbitSourceConfig)
    assert (rabbit.queue, rabbit.declare, rabbit.event_type, rabbit.route) == (
        "orders", True, "{routing_key}", True
    )  # fmt: skip
    assert isinstance(nats, NatsSourceConfig)
    assert (nats.stream, nats.durable, nats.event_type) == ("S", "d", "{subject}")


@pytest.mark.parametrize(
    ("source", "field"),
    [
        ({**RABBIT, "prefech": 3}, "sources[0].prefech"),
        ({**RABBIT, "bindings": [{"exchange": "x", "keys": ["a"]}]}, "sources[0].bindings[0].keys"),
        ({**NATS, "tls": {"ca": "x"}}, "sources[0].tls.ca"),
    ],
)
def test_unknown_keys_are_refused_with_their_path(source: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as caught:
        config(source)
    assert caught.value.field == field
    assert "unknown key" in caught.value.message


@pytest.mark.parametrize(
    ("source", "field", "says"),
    [
        ({**NATS, "servers": "http://x:4222"}, "servers", "must start with nats://"),
        ({**NATS, "user": "u"}, "password_env", "go together"),
        ({**NATS, "token_env": "T", "creds_file": "/c.creds"}, "creds_file", "set only one of"),
    ],
)
def test_the_nats_source_checks_its_connection_as_the_sink_does(
    source: dict[str, Any], field: str, says: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        config(source)
    assert caught.value.field == "sources[0]"
    assert caught.value.message.startswith(f"sources[0]: {field}: ")
    assert says in caught.value.message


def test_a_source_needs_its_fields_and_a_known_type() -> None:
    with pytest.raises(ConfigError) as caught:
        config({"name": "in", "type": "rabbitmq"})
    assert caught.value.field == "sources[0].queue"
    with pytest.raises(ConfigError) as caught:
        config({"name": "in", "type": "pulsar"})
    assert caught.value.field == "sources[0].type"
    assert "unknown source type 'pulsar'" in caught.value.message
    with pytest.raises(ConfigError) as caught:
        config(RABBIT, {**NATS, "name": "in"})
    assert caught.value.field == "sources[1].name"


def test_event_type_templates_name_only_known_placeholders() -> None:
    with pytest.raises(ConfigError) as caught:
        config({**NATS, "event_type": "nats.{topic}"})
    assert caught.value.field == "sources[0]"
    assert "{topic}" in caught.value.message
    assert "{subject}" in caught.value.message
    assert config({**RABBIT, "event_type": "amqp.{exchange}.{routing_key}"}).sources


def test_on_error_is_one_of_three() -> None:
    with pytest.raises(ConfigError) as caught:
        config({**RABBIT, "on_error": "drop"})
    assert caught.value.field == "sources[0].on_error"


# --- decoding: the sinks' bindings read back --------------------------------


def test_nats_binary_mode_round_trips_to_an_equal_event() -> None:
    sent = full_event()
    got = nats_event(
        data_bytes(sent), headers=nats_headers(sent, sent.key), subject="x", stream="S",
        event_type="{subject}",
    )  # fmt: skip
    # NATS headers are text: the extension is a str here, so the events are equal.
    assert got == sent


def test_nats_extensions_arrive_as_text() -> None:
    sent = full_event(extensions={"count": 3, "flag": True})
    got = nats_event(
        data_bytes(sent), headers=nats_headers(sent, sent.key), subject="x", stream="S",
        event_type="{subject}",
    )  # fmt: skip
    assert got.extensions == {"count": "3", "flag": "true"}


def amqp(event: Event, *, structured: bool = False, key: str | None = None) -> Event:
    props = amqp_properties(event, key, persistent=True, structured=structured)
    body = structured_body(event, key) if structured else data_bytes(event)
    return amqp_event(
        body, headers=props.headers, content_type=props.content_type,
        message_id=props.message_id, routing_key="rk", exchange="ex", queue="q",
        event_type="{routing_key}",
    )  # fmt: skip


def test_amqp_binary_mode_round_trips_to_an_equal_event() -> None:
    sent = full_event(extensions={"tenant": "acme", "count": 3, "flag": True})
    assert amqp(sent, key=sent.key) == sent


def test_amqp_structured_mode_round_trips_to_an_equal_event() -> None:
    sent = full_event()
    assert amqp(sent, structured=True, key=sent.key) == sent


@pytest.mark.parametrize(
    "data", [b"\x00\x01raw", "plain text", None, [1, 2], {"nested": {"x": 1.5}}]
)
def test_data_of_every_shape_round_trips(data: Any) -> None:
    content_type = "text/plain" if isinstance(data, str) else None
    sent = Event(type="t", data=data, datacontenttype=content_type)
    got_amqp = amqp(sent)
    got_nats = nats_event(
        data_bytes(sent), headers=nats_headers(sent, None), subject="s", stream="S",
        event_type="{subject}",
    )  # fmt: skip
    assert got_amqp.data == data
    assert got_nats.data == data


def test_a_plain_message_is_typed_from_the_template() -> None:
    got = amqp_event(
        b'{"a": 1}', headers={"x-trace": "t1"}, content_type=None, message_id="m-1",
        routing_key="", exchange="", queue="jobs", event_type="amqp.{routing_key}",
    )  # fmt: skip
    assert (got.type, got.id, got.data, got.headers) == (
        "amqp.jobs",
        "m-1",
        {"a": 1},
        {"x-trace": "t1"},
    )
    got = nats_event(b"not json", headers=None, subject="orders.new", stream="S",
                     event_type="nats.{stream}.{subject}")  # fmt: skip
    assert (got.type, got.data, got.datacontenttype) == ("nats.S.orders.new", b"not json", None)


def test_json_content_type_decodes_and_a_bad_body_is_undecodable() -> None:
    ok = plain_event("t", b'{"x": [1]}', "application/json; charset=utf-8")
    assert ok.data == {"x": [1]}
    with pytest.raises(Undecodable, match="not JSON"):
        plain_event("t", b"{broken", "application/json")
    with pytest.raises(Undecodable, match="not a valid CloudEvent"):
        nats_event(b"{}", headers={"ce-specversion": "1.0", "ce-id": "1"}, subject="s",
                   stream="S", event_type="{subject}")  # fmt: skip
    with pytest.raises(Undecodable, match="structured CloudEvent"):
        nats_event(b"{", headers={"content-type": "application/cloudevents+json"},
                   subject="s", stream="S", event_type="{subject}")  # fmt: skip


# --- the runner: the commit rule --------------------------------------------


def bus_with(registry: HandlerRegistry, **extra: Any) -> Bus:
    raw: dict[str, Any] = {
        "sinks": [{"name": "mem", "type": "memory"}],
        "routes": [{"match": "order.*", "sink": "mem"}],
        "handlers": {"entry_points": False},
        **extra,
    }
    return Bus(parse_config(raw, {}), registry=registry, metrics=Metrics())


def runner(bus: Bus, **fields: Any) -> Runner:
    source = msgspec.convert({**RABBIT, "retry_initial_s": 0.001, **fields}, RabbitSourceConfig)
    return Runner(bus, source)


def consumed(bus: Bus, outcome: str) -> float:
    return bus.metrics.consumed.labels("in", outcome)._value.get()  # type: ignore[attr-defined,no-any-return]


async def test_a_routed_event_is_acked_once_published(registry: HandlerRegistry) -> None:
    seen: list[str] = []
    bus = bus_with(registry)
    bus.subscribe("order.*", lambda event, ctx: seen.append(event.id))
    async with bus:
        verdict = await runner(bus).deliver(
            Incoming("m1", event=Event(type="order.created", id="e1"))
        )
        sink = bus.sinks["mem"]
        assert isinstance(sink, MemorySink)
        assert [item.event.id for item in sink.items] == ["e1"]
    assert verdict == Verdict("ack")
    assert seen == ["e1"]
    assert consumed(bus, "ok") == 1


async def test_route_false_runs_handlers_only(registry: HandlerRegistry) -> None:
    bus = bus_with(registry)
    async with bus:
        verdict = await runner(bus, route=False).deliver(Incoming("m", event=Event(type="order.x")))
        sink = bus.sinks["mem"]
        assert isinstance(sink, MemorySink)
        assert sink.items == []
    assert verdict == Verdict("ack")


async def test_an_unroutable_event_is_dead_lettered_not_redelivered(
    registry: HandlerRegistry,
) -> None:
    bus = bus_with(registry)
    async with bus:
        verdict = await runner(bus).deliver(Incoming("m", event=Event(type="nobody.routes")))
    assert verdict.action == "dead_letter"
    assert "no_route" in verdict.reason


async def test_undecodable_is_dead_lettered_and_counted(registry: HandlerRegistry) -> None:
    bus = bus_with(registry)
    async with bus:
        verdict = await runner(bus).deliver(Incoming("m", problem="body is not JSON"))
    assert verdict == Verdict("dead_letter", "undecodable: body is not JSON")
    assert consumed(bus, "undecodable") == 1


@pytest.mark.parametrize(
    ("on_error", "action", "runs"), [("ignore", "ack", 1), ("dead_letter", "dead_letter", 1),
                                     ("retry", "dead_letter", 3)],
)  # fmt: skip
async def test_handler_failures_follow_on_error(
    registry: HandlerRegistry, on_error: str, action: str, runs: int
) -> None:
    calls: list[int] = []

    def boom(event: Event, ctx: Context) -> None:
        calls.append(1)
        raise RuntimeError("no stock")

    bus = bus_with(registry)
    bus.subscribe("order.*", boom, name="boom")
    async with bus:
        verdict = await runner(bus, on_error=on_error, route=False).deliver(
            Incoming("m", event=Event(type="order.created"))
        )
    assert verdict.action == action
    assert len(calls) == runs
    if action == "dead_letter":
        assert "boom: error" in verdict.reason
        assert "no stock" in verdict.reason


async def test_retry_acks_once_a_rerun_succeeds(registry: HandlerRegistry) -> None:
    calls: list[int] = []

    def flaky(event: Event, ctx: Context) -> None:
        calls.append(1)
        if len(calls) < 2:
            raise RuntimeError("first time")

    bus = bus_with(registry)
    bus.subscribe("order.*", flaky, name="flaky")
    async with bus:
        verdict = await runner(bus, on_error="retry", route=False).deliver(
            Incoming("m", event=Event(type="order.created"))
        )
    assert verdict == Verdict("ack")
    assert len(calls) == 2


async def test_a_delivery_that_failed_retriably_is_redelivered(registry: HandlerRegistry) -> None:
    # A sink whose broker is away: the publish fails retriably, so the message must come
    # again rather than be acked (or dead-lettered).
    bus = bus_with(
        registry,
        sinks=[{"name": "away", "type": "nats", "servers": "nats://127.0.0.1:9",
                "connect_timeout_s": 0.2}],
        routes=[{"match": "order.*", "sink": "away", "subject": "x"}],
    )  # fmt: skip
    async with bus:
        verdict = await runner(bus).deliver(Incoming("m", event=Event(type="order.created")))
    assert verdict.action == "redeliver"
    assert "sink_unavailable" in verdict.reason
    assert consumed(bus, "redelivered") == 1


async def test_a_bus_that_refuses_the_event_gets_it_redelivered(registry: HandlerRegistry) -> None:
    bus = bus_with(registry)  # never started: emitting a notification event raises
    verdict = await runner(bus).deliver(
        Incoming("m", event=Event(type="order.created"), redelivered=True)
    )
    assert verdict.action == "redeliver"
    assert consumed(bus, "redelivered") == 1
    again = bus.metrics.consumed_again.labels("in")._value.get()  # type: ignore[attr-defined]
    assert again == 1


class SlowSource:
    """A source whose stop takes a while: a second stop must wait for the first."""

    def __init__(self) -> None:
        self.name = "slow"
        self.stopped = asyncio.Event()
        self.stops = 0

    async def start(self, deliver: object) -> None:
        pass

    async def stop(self) -> None:
        self.stops += 1
        await asyncio.sleep(0.05)
        self.stopped.set()

    async def healthcheck(self) -> Health:
        return Health(ok=True)


async def test_a_stop_begun_at_shutdown_is_joined_by_the_next(registry: HandlerRegistry) -> None:
    bus = bus_with(registry)
    sources = Sources((), bus)
    slow = SlowSource()
    sources.sources["slow"] = slow
    sources.runners["slow"] = runner(bus)
    await sources.start()
    sources.begin_stop()  # the sidecar, as shutdown begins
    await sources.stop()  # the sidecar, before stopping the bus: returns once it is done
    assert slow.stopped.is_set()
    assert slow.stops == 1


async def test_a_spooled_event_is_acked_even_while_its_sink_is_away(
    registry: HandlerRegistry, tmp_path: Path
) -> None:
    # Durable delivery: fsync'd to the spool is done (the deliverer sends it later), so
    # a sink that is down does not hold the message up.
    bus = bus_with(
        registry,
        sinks=[{"name": "away", "type": "nats", "servers": "nats://127.0.0.1:9",
                "connect_timeout_s": 0.2}],
        routes=[{"match": "order.*", "sink": "away", "subject": "x"}],
        delivery={"mode": "durable", "spool_dir": str(tmp_path / "spool")},
        shutdown={"grace_s": 0.2},
    )  # fmt: skip
    async with bus:
        verdict = await runner(bus).deliver(Incoming("m", event=Event(type="order.created")))
        pending = bus.spool_status()
    assert verdict == Verdict("ack")
    assert pending is not None
    assert pending["pending"] == {"away": {"events": 1, "bytes": ANY, "oldest_age_s": ANY}}


@pytest.mark.parametrize("mode", ["binary", "structured"])
def test_kafka_records_round_trip_to_an_equal_event(mode: str) -> None:
    sent = full_event()
    value, headers = Codec(mode).encode(sent)
    got = kafka_event(
        value, headers=headers, key=b"customer-3", topic="orders", event_type="{topic}"
    )
    assert got == sent


def test_a_plain_kafka_record_is_typed_from_its_topic() -> None:
    got = kafka_event(b'{"a": 1}', headers=[], key=None, topic="jobs", event_type="kafka.{topic}")
    assert (got.type, got.data) == ("kafka.jobs", {"a": 1})
    with pytest.raises(ConfigError) as caught:
        config({"name": "k", "type": "kafka", "bootstrap_servers": "h:9092", "group_id": "g"})
    assert "either topics or pattern" in caught.value.message


class FailingProducer:
    async def send_and_wait(self, *args: object, **kwargs: object) -> None:
        raise RuntimeError("broker away")


class Record(msgspec.Struct):
    offset: int
    value: bytes
    topic: str = "t"
    partition: int = 0
    key: bytes | None = None
    headers: tuple[tuple[str, bytes], ...] = ()


async def test_kafka_never_commits_past_a_dead_letter_it_could_not_produce() -> None:
    source = KafkaSource(
        msgspec.convert(
            {"name": "k", "type": "kafka", "bootstrap_servers": "h:1", "group_id": "g",
             "topics": ["t"], "dead_letter_topic": "t.dead", "retry_initial_s": 0.001},
            KafkaSourceConfig,
        )
    )  # fmt: skip
    verdicts = iter([Verdict("ack"), Verdict("dead_letter", "boom"), Verdict("ack")])

    async def deliver(incoming: Incoming) -> Verdict:
        return next(verdicts)

    source._deliver = deliver
    consumer = FakeConsumer("tp")
    flow = Flow(consumer, functools.partial(source._record, FailingProducer()), name="k",
                order="partition", concurrency=4, max_records=10, backoff=source._backoff,
                tasks=TaskGroup("test", logging.getLogger("test")))  # fmt: skip
    flow.add("tp", [Record(10, b"{}"), Record(11, b"{}"), Record(12, b"{}")])
    # The dead letter of 11 failed: back to it, so it comes again, and 12 after it.
    await wait_until(lambda: consumer.seeks == [("tp", 11)], timeout=5, what="seek to 11")
    await flow.commit()
    assert consumer.commits == [{"tp": 11}]  # offset 10 done; 11 not dead-lettered
    await flow.close(0.1)


@pytest.mark.parametrize(("max_age_s", "runs"), [(0.004, 1), (None, 4)])
async def test_retry_stops_at_max_age_before_max_attempts(
    registry: HandlerRegistry, max_age_s: float | None, runs: int
) -> None:
    calls: list[int] = []

    def boom(event: Event, ctx: Context) -> None:
        calls.append(1)
        raise RuntimeError("no stock")

    bus = bus_with(registry)
    bus.subscribe("order.*", boom, name="boom")
    # Pauses are jittered in [5, 10] ms: the first already ends past 4 ms.
    fields = {"on_error": "retry", "route": False, "max_attempts": 4, "retry_initial_s": 0.01,
              "retry_max_s": 0.01, "max_age_s": max_age_s}  # fmt: skip
    async with bus:
        verdict = await runner(bus, **fields).deliver(
            Incoming("m", event=Event(type="order.created"))
        )
    assert verdict.action == "dead_letter"
    assert f"handler failed after {runs} run(s)" in verdict.reason
    assert len(calls) == runs


async def test_lag_is_sampled_from_plain_and_async_lag_methods(registry: HandlerRegistry) -> None:
    class Fake:
        def __init__(self, name: str, lag: Any) -> None:
            self.name, self.lag = name, lag

    async def asked() -> int:
        return 7

    def broken() -> int:
        raise RuntimeError("not consuming")

    bus = bus_with(registry)
    sources = Sources((), bus)
    sources.sources = {"a": Fake("a", lambda: 3), "b": Fake("b", asked),  # type: ignore[dict-item]
                       "c": Fake("c", broken), "d": Fake("d", lambda: None)}  # fmt: skip
    await sources.sample_lag()
    gauge = bus.metrics.consumer_lag
    values = {n: gauge.labels(n)._value.get() for n in "abcd"}  # type: ignore[attr-defined]
    assert values == {"a": 3, "b": 7, "c": 0, "d": 0}
