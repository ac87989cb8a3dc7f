"""Poison events and client-chosen destinations, through the real server and real brokers.

A poison event is one no broker will ever take as sent. What can be checked before
publishing (ttl_ms beyond the sink's limit, msgpack extension values, internal or
refused destinations) is a 400 naming the field; what only the broker can tell fails
that event alone, is never retried, and never holds up its neighbours (docs/guarantees.md).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aio_pika
import msgspec
import pytest

from tests.brokers import KafkaBroker, RabbitMQ, create_topic, unique_name
from tests.integration.conftest import ServerFactory
from tests.integration.durable_support import (
    durable_config,
    kafka_ids,
    rabbit_ids,
    spool_metric,
    wait_drained,
)
from tests.integration.server_process import ServerProcess
from tests.integration.test_durable_rabbitmq import declare, rabbit_sink, remove

#: RabbitMQ answers PRECONDITION_FAILED (and closes the channel) above 315 360 000 000 ms.
POISON_TTL = 2**63 - 1
MSGPACK = {"Content-Type": "application/msgpack"}


@pytest.fixture
async def channel(rabbitmq: RabbitMQ) -> Any:
    async with await aio_pika.connect(rabbitmq.url) as connection:
        yield await connection.channel()


def config(
    mode: str, tmp_path: Path, sinks: list[dict[str, Any]], routes: list[dict[str, Any]]
) -> dict[str, Any]:
    return durable_config(tmp_path / "spool", sinks, routes, mode=mode)


async def post(srv: ServerProcess, path: str, body: bytes, headers: dict[str, str]) -> Any:
    async with srv.session() as http, http.post(path, data=body, headers=headers) as r:
        return r.status, await r.json(content_type=None)


def ext_event(event_id: str) -> bytes:
    data = {"ok": 1, "raw": msgspec.msgpack.Ext(7, b"\x00\x01")}
    return msgspec.msgpack.encode({"type": "poison.ext", "id": event_id, "data": data})


@pytest.mark.parametrize("mode", ["sync", "durable"])
async def test_rabbitmq_poison_is_refused_at_ingest_and_nothing_waits_behind_it(
    mode: str,
    rabbitmq: RabbitMQ,
    channel: aio_pika.abc.AbstractChannel,
    evbridge_server_factory: ServerFactory,
    tmp_path: Path,
) -> None:
    dest = await declare(channel)
    try:
        srv = await asyncio.to_thread(
            evbridge_server_factory,
            config(
                mode,
                tmp_path,
                [rabbit_sink(rabbitmq.url, dest.name)],
                [{"match": "*", "sink": "rmq"}],
            ),
        )
        accepted = 200 if mode == "sync" else 202
        good_status = "published" if mode == "sync" else "spooled"

        status, body = await srv.emit({"type": "poison.ttl", "id": "ttl", "ttl_ms": POISON_TTL})
        assert status == 400, body
        assert (body["error"]["code"], body["error"]["field"]) == ("invalid_event", "ttl_ms")
        assert "315360000000" in body["error"]["message"]
        status, body = await post(srv, "/v1/events", ext_event("ext"), MSGPACK)
        assert status == 400, body
        assert body["error"]["field"] == "data"

        # Poison in a batch is that item's 400; its neighbours go on.
        batch: list[dict[str, Any]] = [{"type": "good.b", "id": f"b{i}"} for i in range(6)]
        batch[2] = {"type": "poison.ttl", "id": "ttl-in-batch", "ttl_ms": POISON_TTL}
        status, body = await srv.emit_batch(batch)
        assert status == 200, body
        statuses = [r["status"] for r in body["results"]]
        assert statuses == [good_status] * 2 + ["rejected"] + [good_status] * 3
        assert body["results"][2]["error"]["field"] == "ttl_ms"
        packed = msgspec.msgpack.encode(
            [
                {"type": "good.m", "id": "m0"},
                msgspec.msgpack.decode(ext_event("ext-in-batch")),
                {"type": "good.m", "id": "m2"},
            ]
        )
        status, body = await post(srv, "/v1/events/batch", packed, MSGPACK)
        assert status == 200, body
        assert [r["status"] for r in body["results"]] == [good_status, "rejected", good_status]
        assert body["results"][1]["error"]["field"] == "data"

        # Keyless events after the poison are all delivered, none waits.
        after = [{"type": "good.after", "id": f"a{i}"} for i in range(300)]
        for start in range(0, 300, 100):
            status, body = await srv.emit_batch(after[start : start + 100])
            assert status == 200, body
            assert {r["status"] for r in body["results"]} == {good_status}
        status, _ = await srv.emit({"type": "good.single", "id": "last"})
        assert status == accepted
        want = [e["id"] for e in batch if e["id"] != "ttl-in-batch"] + ["m0", "m2", "last"]
        want += [e["id"] for e in after]
        got = await rabbit_ids(dest.queue, want)
        assert not {str(m.message_id) for m in got} - set(want)
    finally:
        await remove(channel, dest)


@pytest.mark.parametrize("mode", ["sync", "durable"])
async def test_a_broker_refusal_fails_that_event_alone(
    mode: str,
    rabbitmq: RabbitMQ,
    channel: aio_pika.abc.AbstractChannel,
    evbridge_server_factory: ServerFactory,
    tmp_path: Path,
) -> None:
    """What only the broker can tell: an exchange deleted after the sink saw it. The broker
    closes the channel under the whole publish; the event that caused it fails alone (not
    retriable), its coalesced neighbours are republished on a new channel."""
    dest = await declare(channel)
    ghost = await declare(channel)
    dlq = await declare(channel)
    try:
        sink = rabbit_sink(rabbitmq.url, dest.name, channels=1)
        srv = await asyncio.to_thread(
            evbridge_server_factory,
            config(
                mode,
                tmp_path,
                [sink],
                [
                    {
                        "name": "ghost",
                        "match": "ghost.*",
                        "sink": "rmq",
                        "exchange": ghost.name,
                        "dead_letter": {"sink": "rmq", "exchange": dlq.name},
                    },
                    {"name": "all", "match": "*", "sink": "rmq"},
                ],
            ),
        )
        status, _ = await srv.emit({"type": "ghost.first", "id": "g0"})
        assert status in (200, 202)
        await rabbit_ids(ghost.queue, ["g0"])
        await remove(channel, ghost)

        batch = [{"type": "good.n", "id": f"n{i}"} for i in range(6)]
        batch[1] = {"type": "ghost.second", "id": "g1"}
        status, body = await srv.emit_batch(batch)
        assert status == 200, body
        results = body["results"]
        if mode == "sync":
            assert [r["status"] for r in results] == ["published", "rejected"] + ["published"] * 4
            error = results[1]["error"]
            assert (error["code"], error["retriable"]) == ("exchange_not_found", False)
        else:
            assert {r["status"] for r in results} == {"spooled"}
            await wait_drained(srv)
            (dead,) = await rabbit_ids(dlq.queue, ["g1"])
            # Dead-lettered on its first failure, with the broker's reason: no retries.
            assert dead.headers["evbridge-dead-letter-code"] == "exchange_not_found"
            assert dead.headers["evbridge-dead-letter-attempts"] == "1"
            assert await spool_metric(srv, "evbridge_dead_lettered_total", "rmq") == 1
        got = await rabbit_ids(dest.queue, [e["id"] for e in batch if e["id"] != "g1"])
        assert "g1" not in {str(m.message_id) for m in got}
    finally:
        await remove(channel, dest, dlq)
        await channel.exchange_delete(ghost.name)


async def test_kafka_poison_is_refused_at_ingest_and_the_ttl_limit_is_rabbitmq_only(
    kafka_broker: KafkaBroker, evbridge_server_factory: ServerFactory, tmp_path: Path
) -> None:
    topic = unique_name("poison")
    await create_topic(kafka_broker.bootstrap, topic)
    sink = {"name": "kafka", "type": "kafka", "bootstrap_servers": kafka_broker.bootstrap}
    srv = await asyncio.to_thread(
        evbridge_server_factory,
        config("durable", tmp_path, [sink], [{"match": "*", "sink": "kafka", "topic": topic}]),
    )
    status, body = await post(srv, "/v1/events", ext_event("ext"), MSGPACK)
    assert status == 400, body
    assert body["error"]["field"] == "data"
    # Kafka has no expiration: the ttl travels as the ce_ttl header, whatever its size.
    status, body = await srv.emit({"type": "big.ttl", "id": "ttl", "ttl_ms": POISON_TTL})
    assert status == 202, body
    after = [{"type": "good.after", "id": f"k{i}"} for i in range(200)]
    status, body = await srv.emit_batch(after)
    assert status == 200, body
    got = await kafka_ids(kafka_broker.bootstrap, topic, ["ttl"] + [e["id"] for e in after])
    assert "ext" not in {event_id for event_id, _, _ in got}


async def test_template_destinations_cannot_reach_internal_or_refused_ones(
    kafka_broker: KafkaBroker,
    rabbitmq: RabbitMQ,
    channel: aio_pika.abc.AbstractChannel,
    evbridge_server_factory: ServerFactory,
    tmp_path: Path,
) -> None:
    tenant = unique_name("tenant")
    await create_topic(kafka_broker.bootstrap, f"{tenant}.a")
    dest = await declare(channel)
    try:
        sinks = [
            {"name": "kafka", "type": "kafka", "bootstrap_servers": kafka_broker.bootstrap},
            rabbit_sink(rabbitmq.url, dest.name),
        ]
        routes = [
            {"name": "free", "match": "free.*", "sink": "kafka", "topic": "{subject}"},
            {
                "name": "tenants",
                "match": "tenant.*",
                "sink": "kafka",
                "topic": "{data.tenant}",
                "allow": {"topic": [f"{tenant}.*"]},
                "deny": {"topic": [f"{tenant}.admin*"]},
            },
            {
                "name": "amqp",
                "match": "amqp.*",
                "sink": "rmq",
                "exchange": "{data.exchange}",
                "routing_key": "{data.key}",
                "deny": {"routing_key": ["internal.#", "audit.*"]},
            },
        ]
        srv = await asyncio.to_thread(
            evbridge_server_factory, config("sync", tmp_path, sinks, routes)
        )
        refused = [
            ({"type": "free.x", "subject": "__consumer_offsets"}, "topic"),
            ({"type": "free.x", "subject": "__transaction_state"}, "topic"),
            ({"type": "tenant.x", "data": {"tenant": "other.a"}}, "topic"),
            ({"type": "tenant.x", "data": {"tenant": f"{tenant}.admin"}}, "topic"),
            ({"type": "amqp.x", "data": {"exchange": "amq.topic", "key": "a"}}, "exchange"),
            ({"type": "amqp.x", "data": {"exchange": dest.name, "key": "audit.x"}}, "routing_key"),
        ]
        for event, field in refused:
            status, body = await srv.emit(event)
            assert status == 400, (event, body)
            assert body["error"]["code"] == "destination_refused", body
            assert body["error"]["field"] == field, body
        status, body = await srv.emit(
            {"type": "tenant.x", "id": "t-ok", "data": {"tenant": f"{tenant}.a"}}
        )
        assert status == 200, body
        status, body = await srv.emit(
            {"type": "amqp.x", "id": "r-ok", "data": {"exchange": dest.name, "key": "orders.a"}}
        )
        assert status == 200, body
        await kafka_ids(kafka_broker.bootstrap, f"{tenant}.a", ["t-ok"])
        await rabbit_ids(dest.queue, ["r-ok"])
    finally:
        await remove(channel, dest)


async def test_coalesced_single_requests_do_not_fail_with_a_poison_neighbour(
    rabbitmq: RabbitMQ,
    channel: aio_pika.abc.AbstractChannel,
    evbridge_server_factory: ServerFactory,
    tmp_path: Path,
) -> None:
    """Sync mode gathers concurrent requests into one publish: a poison among them (an
    exchange deleted under the sink) gets its own 502, every neighbour its 200."""
    dest = await declare(channel)
    ghost = await declare(channel)
    try:
        srv = await asyncio.to_thread(
            evbridge_server_factory,
            config(
                "sync",
                tmp_path,
                [rabbit_sink(rabbitmq.url, dest.name, channels=1)],
                [
                    {"name": "ghost", "match": "ghost.*", "sink": "rmq", "exchange": ghost.name},
                    {"name": "all", "match": "*", "sink": "rmq"},
                ],
            ),
        )
        status, _ = await srv.emit({"type": "ghost.first", "id": "g-first"})
        assert status == 200
        await remove(channel, ghost)
        events = [
            {"type": "ghost.x", "id": f"g{i}"} if i % 50 == 7 else {"type": "good.x", "id": f"c{i}"}
            for i in range(400)
        ]
        async with srv.session() as http:

            async def one(event: dict[str, Any]) -> tuple[str, int, Any]:
                async with http.post("/v1/events", json=event) as r:
                    return event["id"], r.status, await r.json(content_type=None)

            answers = await asyncio.gather(*(one(e) for e in events))
        for event_id, status, body in answers:
            if event_id.startswith("g"):
                assert status == 502, (event_id, body)
                assert body["error"]["code"] == "exchange_not_found"
            else:
                assert status == 200, (event_id, body.get("error", body))
        await rabbit_ids(dest.queue, [e["id"] for e in events if e["id"].startswith("c")])
    finally:
        await remove(channel, dest)
        await channel.exchange_delete(ghost.name)
