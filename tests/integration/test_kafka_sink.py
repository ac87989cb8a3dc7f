"""The Kafka sink against real Kafka-protocol brokers: Tansu (main) and noida-db.

Sink-level: these call ``publish_many`` directly. The same behaviour through the
HTTP server is in test_kafka_server.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from bridge.errors import SinkError, SinkRejected, SinkUnavailable
from bridge.event import Event, data_bytes
from bridge.results import Delivery
from bridge.sinks.base import Outgoing
from bridge.sinks.kafka import KafkaConfig, KafkaRoute, KafkaSink
from tests.brokers import (
    LOCALHOST,
    KafkaBroker,
    KafkaBrokerFactory,
    NoidaBroker,
    TcpProxy,
    consume_all,
    create_topic,
    free_port,
    unique_name,
    wait_until,
)

MiB = 1024 * 1024
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@contextlib.asynccontextmanager
async def running(bootstrap: str, **options: Any) -> AsyncIterator[KafkaSink]:
    options.setdefault("request_timeout_ms", 5000)
    sink = KafkaSink(
        KafkaConfig(name="kafka", type="kafka", bootstrap_servers=bootstrap, **options)
    )
    await sink.start()
    try:
        yield sink
    finally:
        await sink.stop()


def out(topic: str, event: Event, key: str | None = None) -> Outgoing:
    return Outgoing(event, "route", KafkaRoute(topic=topic), key)


def event(n: int = 0, **fields: Any) -> Event:
    fields.setdefault("data", {"n": n})
    fields.setdefault("source", "tests/kafka")
    return Event(type="kafka.test", **fields)


def deliveries(results: list[Delivery | SinkError]) -> list[Delivery]:
    assert all(isinstance(r, Delivery) for r in results), results
    return [r for r in results if isinstance(r, Delivery)]


# --------------------------------------------------------------------------- message mapping


async def test_binary_mode_maps_key_value_and_every_header(kafka_broker: KafkaBroker) -> None:
    topic = await create_topic(kafka_broker.bootstrap, unique_name("binary"), partitions=3)
    full = Event(
        type="invite.accepted",
        source="app/invites",
        subject="invite/42",
        data={"user": "u1", "text": "é✓"},
        correlation_id="corr-1",
        ttl_ms=60000,
        headers={"traceparent": TRACEPARENT, "tracestate": "vendor=1", "x-tenant": "t1"},
    )
    raw = Event(
        type="blob.stored",
        source="app/blobs",
        data=b"\x00\xffbinary",
        datacontenttype="application/octet-stream",
    )
    async with running(kafka_broker.bootstrap) as sink:
        results = deliveries(await sink.publish_many([out(topic, full, "u1"), out(topic, raw)]))

    got = await consume_all(kafka_broker.bootstrap, topic, n=2)
    by_id = {dict(r.headers)["ce_id"].decode(): r for r in got}
    first, second = by_id[full.id], by_id[raw.id]
    assert first.key == b"u1"
    assert json.loads(first.value or b"") == {"user": "u1", "text": "é✓"}
    assert dict(first.headers) == {
        "ce_specversion": b"1.0",
        "ce_id": full.id.encode(),
        "ce_type": b"invite.accepted",
        "ce_time": full.time.encode(),
        "content-type": b"application/json",
        "ce_source": b"app/invites",
        "ce_subject": b"invite/42",
        "ce_correlationid": b"corr-1",
        "ce_ttl": b"60000",
        "traceparent": TRACEPARENT.encode(),
        "tracestate": b"vendor=1",
        "x-tenant": b"t1",
    }
    assert second.key is None
    assert second.value == b"\x00\xffbinary"
    assert dict(second.headers)["content-type"] == b"application/octet-stream"
    # What the sink returned is where a consumer finds the record.
    assert [(d.destination, d.partition, d.offset) for d in results] == [
        (topic, first.partition, first.offset),
        (topic, second.partition, second.offset),
    ]


async def test_structured_mode_value_is_the_cloudevent(kafka_broker: KafkaBroker) -> None:
    topic = await create_topic(kafka_broker.bootstrap, unique_name("structured"))
    ev = event(7, subject="s", headers={"traceparent": TRACEPARENT})
    async with running(kafka_broker.bootstrap, mode="structured") as sink:
        deliveries(await sink.publish_many([out(topic, ev, "k")]))

    [record] = await consume_all(kafka_broker.bootstrap, topic, n=1)
    assert json.loads(record.value or b"") == {
        "specversion": "1.0",
        "id": ev.id,
        "source": "tests/kafka",
        "type": "kafka.test",
        "time": ev.time,
        "subject": "s",
        "datacontenttype": "application/json",
        "data": {"n": 7},
    }
    assert dict(record.headers) == {
        "content-type": b"application/cloudevents+json; charset=utf-8",
        "traceparent": TRACEPARENT.encode(),
    }
    assert record.key == b"k"


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
async def test_compression_codecs_round_trip(kafka_broker: KafkaBroker, codec: str) -> None:
    topic = await create_topic(kafka_broker.bootstrap, unique_name(f"codec-{codec}"))
    events = [event(i, data={"n": i, "pad": "x" * 500}) for i in range(50)]
    async with running(kafka_broker.bootstrap, compression=codec) as sink:
        deliveries(await sink.publish_many([out(topic, e, "k") for e in events]))

    got = await consume_all(kafka_broker.bootstrap, topic, n=50)
    assert [r.value for r in got] == [data_bytes(e) for e in events]


# --------------------------------------------------------------------------- batching and order


async def test_one_call_is_one_batch_per_partition_with_matching_offsets(
    kafka_broker: KafkaBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    topic = await create_topic(kafka_broker.bootstrap, unique_name("batch"), partitions=3)
    keys = [f"user-{i % 7}" for i in range(1500)]
    items = [out(topic, event(i), key) for i, key in enumerate(keys)]
    async with running(kafka_broker.bootstrap) as sink:
        producer = sink._supervisor.current().producer  # type: ignore[union-attr]
        sent: list[tuple[str, int]] = []
        original = producer.send_batch

        async def counting(batch: Any, topic: str, *, partition: int) -> Any:
            sent.append((topic, partition))
            return await original(batch, topic, partition=partition)

        monkeypatch.setattr(producer, "send_batch", counting)
        results = deliveries(await sink.publish_many(items))

    used = {d.partition for d in results}
    assert sorted(sent) == sorted((topic, p) for p in used), "one batch per partition"
    # Same key, same partition; within a partition, offsets follow the input order.
    by_key: dict[str, set[int | None]] = {}
    for key, d in zip(keys, results, strict=True):
        by_key.setdefault(key, set()).add(d.partition)
    assert all(len(p) == 1 for p in by_key.values())
    for p in used:
        offsets = [d.offset for d in results if d.partition == p]
        assert offsets == list(range(len(offsets)))

    got = await consume_all(kafka_broker.bootstrap, topic, n=1500, timeout=20)
    where = {dict(r.headers)["ce_id"].decode(): (r.partition, r.offset) for r in got}
    assert [where[i.event.id] for i in items] == [(d.partition, d.offset) for d in results]


async def test_concurrent_calls_share_batches_and_keep_per_call_order(
    kafka_broker: KafkaBroker,
) -> None:
    topic = await create_topic(kafka_broker.bootstrap, unique_name("concurrent"), partitions=2)
    calls = [[out(topic, event(i), f"call-{c}") for i in range(20)] for c in range(30)]
    async with running(kafka_broker.bootstrap) as sink:
        results = await asyncio.gather(*(sink.publish_many(c) for c in calls))

    for call in results:
        ds = deliveries(call)
        assert len({d.partition for d in ds}) == 1
        offsets = [d.offset for d in ds]
        assert offsets == sorted(offsets)
        assert len(set(offsets)) == 20
    got = await consume_all(kafka_broker.bootstrap, topic, n=600, timeout=20)
    assert len({(r.partition, r.offset) for r in got}) == 600


async def test_linger_gathers_calls_spread_in_time(
    kafka_broker: KafkaBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    topic = await create_topic(kafka_broker.bootstrap, unique_name("linger"))
    async with running(kafka_broker.bootstrap, linger_ms=200) as sink:
        producer = sink._supervisor.current().producer  # type: ignore[union-attr]
        calls = 0
        original = producer.send_batch

        async def counting(batch: Any, topic: str, *, partition: int) -> Any:
            nonlocal calls
            calls += 1
            return await original(batch, topic, partition=partition)

        monkeypatch.setattr(producer, "send_batch", counting)

        async def later(i: int) -> list[Delivery | SinkError]:
            await asyncio.sleep(0.02 * i)  # spreads the calls over a few loop iterations
            return await sink.publish_many([out(topic, event(i), "k")])

        results = await asyncio.gather(*(later(i) for i in range(5)))
    assert calls == 1
    assert sorted(deliveries([r for rs in results for r in rs]), key=lambda d: d.offset or 0)


# --------------------------------------------------------------------------- per-event failures


async def test_too_large_event_fails_alone(kafka_broker: KafkaBroker) -> None:
    topic = await create_topic(kafka_broker.bootstrap, unique_name("large"))
    big = event(data=b"x" * (MiB + 1), datacontenttype="application/octet-stream")
    items = [out(topic, event(0), "k"), out(topic, big, "k"), out(topic, event(2), "k")]
    async with running(kafka_broker.bootstrap) as sink:
        first, failed, third = await sink.publish_many(items)

    assert isinstance(failed, SinkRejected)
    assert (failed.code, failed.field, failed.retriable) == ("message_too_large", "data", False)
    assert "max_message_bytes" in failed.message
    assert isinstance(first, Delivery)
    assert isinstance(third, Delivery)
    got = await consume_all(kafka_broker.bootstrap, topic, n=2)
    assert [dict(r.headers)["ce_id"] for r in got] == [
        items[0].event.id.encode(),
        items[2].event.id.encode(),
    ]


async def test_broker_size_refusal_is_narrowed_to_the_event(noida_broker: NoidaBroker) -> None:
    # noida-db refuses records above ~1 MB; with the client-side limit raised, the refused
    # shared batch is resent record by record so that only the large one fails.
    topic = await create_topic(noida_broker.bootstrap, unique_name("broker-large"))
    big = event(data=b"x" * (MiB + 16), datacontenttype="application/octet-stream")
    items = [out(topic, event(0), "k"), out(topic, big, "k"), out(topic, event(2), "k")]
    async with running(
        noida_broker.bootstrap, max_message_bytes=4 * MiB, max_batch_bytes=4 * MiB
    ) as sink:
        first, failed, third = await sink.publish_many(items)

    assert isinstance(failed, SinkRejected)
    assert failed.code == "message_too_large"
    assert isinstance(first, Delivery)
    assert isinstance(third, Delivery)
    got = await consume_all(noida_broker.bootstrap, topic, n=2)
    assert [(r.partition, r.offset) for r in got] == [
        (first.partition, first.offset),
        (third.partition, third.offset),
    ]


async def test_unknown_and_invalid_topics_fail_per_event(kafka_broker: KafkaBroker) -> None:
    good = await create_topic(kafka_broker.bootstrap, unique_name("good"))
    missing = unique_name("missing")
    items = [out(good, event(0)), out(missing, event(1)), out("bad topic!", event(2))]
    async with running(kafka_broker.bootstrap) as sink:
        loop = asyncio.get_running_loop()
        started = loop.time()
        ok, unknown, invalid = await sink.publish_many(items)
        assert loop.time() - started < 2.0

    assert isinstance(ok, Delivery)
    assert isinstance(unknown, SinkRejected)
    assert unknown.code == "unknown_topic"
    assert isinstance(invalid, SinkRejected)
    assert invalid.code == "invalid_topic"
    assert not unknown.retriable
    assert not invalid.retriable


async def test_auto_create_topics_creates_on_first_publish(kafka_broker: KafkaBroker) -> None:
    topic = unique_name("autocreate")
    async with running(kafka_broker.bootstrap, auto_create_topics=True) as sink:
        [result] = await sink.publish_many([out(topic, event(0))])
    assert isinstance(result, Delivery)
    [record] = await consume_all(kafka_broker.bootstrap, topic, n=1)
    assert (record.partition, record.offset) == (result.partition, result.offset)


# --------------------------------------------------------------------------- availability


async def test_broker_down_at_start_then_recovers(kafka_broker_factory: KafkaBrokerFactory) -> None:
    port = free_port()
    bootstrap = f"{LOCALHOST}:{port}"
    async with running(bootstrap, auto_create_topics=True) as sink:  # start() does not fail
        health = await sink.healthcheck()
        assert not health.ok
        assert bootstrap in health.detail

        loop = asyncio.get_running_loop()
        started = loop.time()
        [result] = await sink.publish_many([out("t", event(0))])
        assert loop.time() - started < 0.5, "fails fast while the broker is away"
        assert isinstance(result, SinkUnavailable)
        assert result.retriable

        await kafka_broker_factory(port=port)

        async def healthy() -> bool:
            return (await sink.healthcheck()).ok

        await wait_until(healthy, timeout=10, what="the sink to connect by itself")
        topic = unique_name("late")
        [result] = await sink.publish_many([out(topic, event(1))])
        assert isinstance(result, Delivery), result


async def test_blackholed_broker_times_out_retriably_then_recovers(
    kafka_broker_factory: KafkaBrokerFactory,
) -> None:
    port = free_port()
    async with TcpProxy(LOCALHOST, port) as proxy:
        await kafka_broker_factory(port=port, advertised_port=proxy.port)
        topic = await create_topic(proxy.address, unique_name("blackhole"))
        options = {"request_timeout_ms": 10_000, "health_timeout_ms": 500}
        async with running(proxy.address, **options) as sink:
            deliveries(await sink.publish_many([out(topic, event(0))]))
            await proxy.blackhole()

            loop = asyncio.get_running_loop()
            started = loop.time()
            [result] = await sink.publish_many([out(topic, event(1))])
            assert isinstance(result, SinkUnavailable), result
            assert result.retriable
            # Not the 10 s request timeout: after 0.5 s a health probe (0.5 s) finds no broker.
            assert loop.time() - started < 2.5
            assert not (await sink.healthcheck()).ok
            # Known to be down: the next publish fails at once.
            started = loop.time()
            [result] = await sink.publish_many([out(topic, event(2))])
            assert isinstance(result, SinkUnavailable)
            assert loop.time() - started < 0.2

            await proxy.accept()

            async def delivered() -> bool:
                [r] = await sink.publish_many([out(topic, event(3))])
                return isinstance(r, Delivery)

            await wait_until(delivered, timeout=15, what="publishing to work again", interval=0.2)


async def test_noida_restart_mid_run_keeps_working(noida_broker: NoidaBroker) -> None:
    topic = await create_topic(noida_broker.bootstrap, unique_name("restart"), partitions=2)
    options = {"enable_idempotence": True, "request_timeout_ms": 10_000}
    async with running(noida_broker.bootstrap, **options) as sink:
        before = deliveries(await sink.publish_many([out(topic, event(i), "k") for i in range(10)]))
        await noida_broker.stop()

        loop = asyncio.get_running_loop()
        started = loop.time()
        [during] = await sink.publish_many([out(topic, event(10), "k")])
        assert isinstance(during, SinkUnavailable)
        assert during.retriable
        # The idempotent producer would retry forever; the sink's probe gives up early.
        assert loop.time() - started < 2.5

        await noida_broker.start()

        async def delivered() -> bool:
            [r] = await sink.publish_many([out(topic, event(11), "k")])
            return isinstance(r, Delivery)

        await wait_until(delivered, timeout=20, what="publishing after the restart", interval=0.2)
        after = deliveries(await sink.publish_many([out(topic, event(12), "k")]))
        assert (await sink.healthcheck()).ok

    partition = before[0].partition
    assert after[0].partition == partition
    got = await consume_all(noida_broker.bootstrap, topic, n=12, timeout=15)
    offsets = sorted(r.offset for r in got if r.partition == partition)
    assert offsets[:10] == [d.offset for d in before], "data from before the restart is kept"
    assert after[0].offset in offsets


async def test_idempotence_on_a_broker_that_refuses_it_reports_unhealthy(
    kafka_broker: KafkaBroker,
) -> None:
    async with running(
        kafka_broker.bootstrap, enable_idempotence=True, request_timeout_ms=1000
    ) as sink:
        health = await sink.healthcheck()
        assert not health.ok
        [result] = await sink.publish_many([out("t", event(0))])
        assert isinstance(result, SinkUnavailable)


async def test_rejected_credentials_fail_publishes_as_unauthorized_and_retriable(
    kafka_broker: KafkaBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Tansu has no SASL: the handshake fails, which the sink reports as a refused login
    # (unauthorized, retriable: 503 through the API), as every broker sink does.
    monkeypatch.setenv("EVBRIDGE_TEST_KAFKA_PASSWORD", "secret")
    options = {
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "PLAIN",
        "sasl_username": "bridge",
        "sasl_password_env": "EVBRIDGE_TEST_KAFKA_PASSWORD",
    }
    async with running(kafka_broker.bootstrap, **options) as sink:
        health = await sink.healthcheck()
        [result] = await sink.publish_many([out("t", event(0))])
    assert not health.ok
    assert "UnsupportedSaslMechanism" in health.detail
    assert isinstance(result, SinkUnavailable)
    assert result.code == "unauthorized"
    assert result.retriable


async def test_noida_accepts_any_sasl_password(
    noida_broker: NoidaBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Why the failure contract marks "credentials refused" not applicable on noida-db:
    it takes SASL PLAIN with a wrong password. When it starts checking, this fails, and
    tests/contract/failure_kafka.py should give it a refused_sink()."""
    monkeypatch.setenv("EVBRIDGE_TEST_KAFKA_PASSWORD", "surely-the-wrong-password")
    topic = unique_name("sasl")
    options = {
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "PLAIN",
        "sasl_username": "nobody",
        "sasl_password_env": "EVBRIDGE_TEST_KAFKA_PASSWORD",
        "auto_create_topics": True,
    }
    async with running(noida_broker.bootstrap, **options) as sink:
        [result] = await sink.publish_many([out(topic, event(0))])
    assert isinstance(result, Delivery), result
