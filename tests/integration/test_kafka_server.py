"""The Kafka sink through the real HTTP server (``evbridge serve`` as a subprocess)."""

from __future__ import annotations

import asyncio
import io
import json
import sys
from pathlib import Path
from typing import Any

from bridge.event import Event
from tests.brokers import (
    LOCALHOST,
    ConsumedRecord,
    KafkaBroker,
    KafkaBrokerFactory,
    NoidaBroker,
    consume_all,
    create_topic,
    free_port,
    unique_name,
    wait_until,
)
from tests.integration.conftest import ServerFactory
from tests.integration.server_process import ServerProcess

MiB = 1024 * 1024
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
EVBRIDGE = str(Path(sys.executable).with_name("evbridge"))


def kafka_config(bootstrap: str, routes: list[dict[str, Any]], **sink: Any) -> dict[str, Any]:
    """One Kafka sink named ``kafka``; routes default to it."""
    sink.setdefault("request_timeout_ms", 5000)
    return {
        "sinks": [{"name": "kafka", "type": "kafka", "bootstrap_servers": bootstrap, **sink}],
        "routes": [{"sink": "kafka", **route} for route in routes],
    }


def by_id(records: list[ConsumedRecord]) -> dict[str, ConsumedRecord]:
    return {dict(r.headers)["ce_id"].decode(): r for r in records}


def where(delivery: dict[str, Any]) -> tuple[str, int, int]:
    return delivery["destination"], delivery["partition"], delivery["offset"]


async def post_large(srv: ServerProcess, path: str, payload: Any) -> tuple[int, Any]:
    """POST JSON from a file-like body (aiohttp warns about raw bodies over 1 MiB)."""
    body = io.BytesIO(json.dumps(payload).encode())
    async with (
        srv.session() as http,
        http.post(path, data=body, headers={"Content-Type": "application/json"}) as r,
    ):
        return r.status, await r.json()


async def ready_status(srv: ServerProcess) -> int:
    async with srv.session("metrics") as http, http.get("/readyz") as r:
        return r.status


async def test_single_and_batch_events_land_as_returned(
    kafka_broker: KafkaBroker, evbridge_server_factory: ServerFactory
) -> None:
    topic = await create_topic(kafka_broker.bootstrap, unique_name("server"), partitions=3)
    srv = evbridge_server_factory(
        kafka_config(kafka_broker.bootstrap, [{"name": "all", "match": "*", "topic": topic}])
    )
    single = {
        "type": "order.placed",
        "source": "shop",
        "subject": "order/1",
        "key": "customer-7",
        "data": {"order": 1, "text": "é✓"},
        "headers": {"x-tenant": "t1"},
    }
    status, body = await srv.emit(
        single, headers={"traceparent": TRACEPARENT, "tracestate": "shop=1"}
    )
    assert status == 200, body
    assert body["status"] == "published"
    [single_delivery] = body["deliveries"]

    batch = [{"type": "order.line", "key": "customer-7", "data": {"line": i}} for i in range(5)]
    status, batch_body = await srv.emit_batch(batch)
    assert status == 200, batch_body
    assert batch_body["accepted"] == 5
    batch_deliveries = [r["deliveries"][0] for r in batch_body["results"]]

    ndjson = "\n".join(json.dumps({"type": "order.note", "data": {"note": i}}) for i in range(3))
    async with (
        srv.session() as http,
        http.post(
            "/v1/events/batch", data=ndjson, headers={"Content-Type": "application/x-ndjson"}
        ) as r,
    ):
        assert r.status == 200
        nd_body = await r.json()
    nd_deliveries = [res["deliveries"][0] for res in nd_body["results"]]

    records = by_id(await consume_all(kafka_broker.bootstrap, topic, n=9))
    first = records[body["id"]]
    assert first.key == b"customer-7"
    assert json.loads(first.value or b"") == {"order": 1, "text": "é✓"}
    headers = dict(first.headers)
    assert headers["ce_type"] == b"order.placed"
    assert headers["ce_source"] == b"shop"
    assert headers["ce_subject"] == b"order/1"
    assert headers["ce_specversion"] == b"1.0"
    assert headers["ce_time"] == body_time(records, body["id"])
    assert headers["content-type"] == b"application/json"
    assert headers["x-tenant"] == b"t1"
    assert headers["traceparent"] == TRACEPARENT.encode()
    assert headers["tracestate"] == b"shop=1"
    assert where(single_delivery) == (topic, first.partition, first.offset)

    # Same key as the single event: same partition, in request order after it.
    lines = [records[r["id"]] for r in batch_body["results"]]
    assert [where(d) for d in batch_deliveries] == [(topic, r.partition, r.offset) for r in lines]
    assert {r.partition for r in lines} == {first.partition}
    assert [r.offset for r in lines] == list(range(first.offset + 1, first.offset + 6))
    assert [json.loads(r.value or b"") for r in lines] == [{"line": i} for i in range(5)]
    notes = [records[res["id"]] for res in nd_body["results"]]
    assert [where(d) for d in nd_deliveries] == [(topic, r.partition, r.offset) for r in notes]
    assert all(r.key is None for r in notes)


def body_time(records: dict[str, ConsumedRecord], event_id: str) -> bytes:
    """The ce_time header must be a valid RFC 3339 event time (the server sets it)."""
    value = dict(records[event_id].headers)["ce_time"]
    Event(type="t", time=value.decode())  # validates
    return value


async def test_topic_and_key_templates(
    kafka_broker: KafkaBroker, evbridge_server_factory: ServerFactory
) -> None:
    prefix = unique_name("tmpl")
    topics = [await create_topic(kafka_broker.bootstrap, f"{prefix}.{t}") for t in ("a", "b")]
    route = {"name": "tmpl", "match": f"{prefix}.*", "topic": "{type}", "key": "{data.user}"}
    srv = evbridge_server_factory(kafka_config(kafka_broker.bootstrap, [route]))
    events = [
        {"type": f"{prefix}.a", "key": "ignored", "data": {"user": "u1"}},
        {"type": f"{prefix}.b", "data": {"user": "u2"}},
    ]
    status, body = await srv.emit_batch(events)
    assert status == 200, body
    assert [r["deliveries"][0]["destination"] for r in body["results"]] == topics

    status, missing = await srv.emit({"type": f"{prefix}.a", "data": {}})
    assert status == 400
    assert missing["error"]["code"] == "template_error"

    consumed = await asyncio.gather(*(consume_all(kafka_broker.bootstrap, t, n=1) for t in topics))
    for [record], user, result in zip(consumed, ("u1", "u2"), body["results"], strict=True):
        assert record.key == user.encode()
        assert (record.partition, record.offset) == (
            result["deliveries"][0]["partition"],
            result["deliveries"][0]["offset"],
        )


async def test_compression_codecs_round_trip(
    kafka_broker: KafkaBroker, evbridge_server_factory: ServerFactory
) -> None:
    codecs = ["gzip", "snappy", "lz4", "zstd"]
    prefix = unique_name("codec")
    sinks = [
        {"name": codec, "type": "kafka", "bootstrap_servers": kafka_broker.bootstrap}
        | {"compression": codec}
        for codec in codecs
    ]
    routes = []
    for codec in codecs:
        topic = await create_topic(kafka_broker.bootstrap, f"{prefix}-{codec}")
        routes.append({"name": codec, "match": f"{codec}.*", "sink": codec, "topic": topic})
    srv = evbridge_server_factory({"sinks": sinks, "routes": routes})

    payload = {"text": "compress me " * 50}
    for codec in codecs:
        status, body = await srv.emit_batch([{"type": f"{codec}.x", "data": payload}] * 20)
        assert status == 200
        assert body["accepted"] == 20, body
    consumed = await asyncio.gather(
        *(consume_all(kafka_broker.bootstrap, f"{prefix}-{codec}", n=20) for codec in codecs)
    )
    for got in consumed:
        assert [json.loads(r.value or b"") for r in got] == [payload] * 20


async def test_too_large_event_fails_alone_in_its_batch(
    kafka_broker: KafkaBroker, evbridge_server_factory: ServerFactory
) -> None:
    topic = await create_topic(kafka_broker.bootstrap, unique_name("large"))
    config = kafka_config(kafka_broker.bootstrap, [{"name": "all", "match": "*", "topic": topic}])
    config["limits"] = {"max_body_bytes": 4 * MiB}
    srv = evbridge_server_factory(config)
    big = {"type": "blob", "key": "k", "data": "x" * (MiB + 1)}
    small = {"type": "blob", "key": "k", "data": "small"}

    status, body = await post_large(srv, "/v1/events/batch", [small, big, small])
    assert status == 200
    first, failed, third = body["results"]
    assert first["status"] == third["status"] == "published"
    assert failed["status"] == "rejected"
    assert failed["error"]["code"] == "message_too_large"
    assert failed["error"]["retriable"] is False
    assert "max_message_bytes" in failed["error"]["message"]

    status, single = await post_large(srv, "/v1/events", big)
    assert status == 502
    assert single["error"]["code"] == "message_too_large"

    got = await consume_all(kafka_broker.bootstrap, topic, n=2)
    assert [r.value for r in got] == [b'"small"', b'"small"']
    assert [(r.partition, r.offset) for r in got] == [
        (first["deliveries"][0]["partition"], first["deliveries"][0]["offset"]),
        (third["deliveries"][0]["partition"], third["deliveries"][0]["offset"]),
    ]


async def test_unknown_topic_is_a_502_with_its_code(
    kafka_broker: KafkaBroker, evbridge_server_factory: ServerFactory
) -> None:
    missing = unique_name("missing")
    srv = evbridge_server_factory(
        kafka_config(kafka_broker.bootstrap, [{"name": "all", "match": "*", "topic": missing}])
    )
    status, body = await srv.emit({"type": "x", "data": 1})
    assert status == 502
    assert body["error"]["code"] == "unknown_topic"
    assert body["error"]["retriable"] is False


async def test_refused_credentials_are_a_retriable_503(
    kafka_broker: KafkaBroker, evbridge_server_factory: ServerFactory
) -> None:
    config = kafka_config(
        kafka_broker.bootstrap,
        [{"name": "all", "match": "*", "topic": "t"}],
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="SCRAM-SHA-256",
        sasl_username="bridge",
        sasl_password_env="KAFKA_TEST_PASSWORD",
    )
    srv = evbridge_server_factory(
        config, env={"KAFKA_TEST_PASSWORD": "s3cr3t-pw"}, wait_ready=False
    )
    assert await ready_status(srv) == 503
    status, body = await srv.emit({"type": "x", "data": 1})
    # The broker refused the sidecar's account, not the client: retriable, not a 401.
    assert status == 503
    assert body["error"]["code"] == "unauthorized"
    assert body["error"]["retriable"] is True
    assert "s3cr3t-pw" not in json.dumps(body)
    assert "s3cr3t-pw" not in srv.log_path.read_text()


async def test_broker_down_at_start_then_recovery_without_restart(
    kafka_broker_factory: KafkaBrokerFactory, evbridge_server_factory: ServerFactory
) -> None:
    port = free_port()
    bootstrap = f"{LOCALHOST}:{port}"
    topic = unique_name("late")
    config = kafka_config(bootstrap, [{"name": "all", "match": "*", "topic": topic}])
    srv = evbridge_server_factory(config, wait_ready=False)

    # `evbridge check` runs the same health check and fails.
    check = await asyncio.create_subprocess_exec(
        EVBRIDGE,
        "check",
        "--config",
        str(srv.config_path),
        "--timeout",
        "5",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    async with asyncio.timeout(60):
        output, _ = await check.communicate()
    report = output.decode()
    assert check.returncode == 1, report
    assert "sink kafka (kafka)" in report
    assert "FAIL" in report

    assert await ready_status(srv) == 503
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with (
        srv.session() as http,
        http.post("/v1/events", json={"type": "x", "data": 1}) as r,
    ):
        assert r.status == 503
        assert r.headers["Retry-After"]
        body = await r.json()
    assert loop.time() - started < 2.0, "fails fast while the broker is away"
    assert body["error"]["code"] == "sink_unavailable"
    assert body["error"]["retriable"] is True

    await kafka_broker_factory(port=port)
    await create_topic(bootstrap, topic)

    async def ready() -> bool:
        return await ready_status(srv) == 200

    await wait_until(ready, timeout=15, what="/readyz to pass once the broker is up")
    status, body = await srv.emit({"type": "x", "key": "k", "data": 2})
    assert status == 200, body
    [record] = await consume_all(bootstrap, topic, n=1)
    assert (record.partition, record.offset) == (
        body["deliveries"][0]["partition"],
        body["deliveries"][0]["offset"],
    )


async def test_noida_restart_mid_run(
    noida_broker: NoidaBroker, evbridge_server_factory: ServerFactory
) -> None:
    topic = await create_topic(noida_broker.bootstrap, unique_name("restart"))
    route = {"name": "all", "match": "*", "topic": topic}
    srv = evbridge_server_factory(
        kafka_config(noida_broker.bootstrap, [route], enable_idempotence=True)
    )
    status, before = await srv.emit_batch([{"type": "x", "key": "k", "data": i} for i in range(5)])
    assert status == 200
    assert before["accepted"] == 5

    await noida_broker.stop()
    async with (
        srv.session() as http,
        http.post("/v1/events", json={"type": "x", "key": "k", "data": "down"}) as r,
    ):
        assert r.status == 503
        assert r.headers["Retry-After"]

    await noida_broker.start()

    async def published() -> bool:
        status, _ = await srv.emit({"type": "x", "key": "k", "data": "after"})
        return status == 200

    await wait_until(published, timeout=20, what="publishing after the restart", interval=0.2)
    assert await ready_status(srv) == 200
    got = await consume_all(noida_broker.bootstrap, topic, n=6, timeout=15)
    values = [json.loads(r.value or b"") for r in got]
    assert values[:5] == [0, 1, 2, 3, 4], "records from before the restart are kept"
    assert "after" in values


async def test_sink_up_gauge_and_one_log_line_per_state_change(
    tmp_path: Path, evbridge_server_factory: ServerFactory
) -> None:
    """Down at start, up, lost mid-run (no traffic: the periodic probe notices), up again:
    ``evbridge_sink_up{sink}`` follows, and each change is logged once, not per retry."""
    from tests.contract.failure_kafka import TansuFailureTarget

    broker = TansuFailureTarget(tmp_path / "tansu")
    config = kafka_config(
        broker.bootstrap,
        [{"name": "all", "match": "*", "topic": broker.topic}],
        reconnect_max_s=0.05,
        probe_interval_s=0.2,
        health_timeout_ms=500,
    )
    srv = evbridge_server_factory(config, wait_ready=False)

    async def gauge_is(value: float) -> bool:
        return await srv.metric("evbridge_sink_up", {"sink": "kafka"}) == value

    try:
        assert await gauge_is(0.0)
        # A second of refused connects at up to 20 attempts a second: many retries.
        await asyncio.sleep(1.0)
        await broker.start_broker()
        await wait_until(lambda: gauge_is(1.0), timeout=15, what="evbridge_sink_up 1")
        status, body = await srv.emit({"type": "x", "data": 1})
        assert status == 200, body
        broker.stop_broker()
        await wait_until(lambda: gauge_is(0.0), timeout=10, what="evbridge_sink_up 0")
        await asyncio.sleep(1.0)  # probes with backoff fail again and again meanwhile
        await broker.start_broker()
        await wait_until(lambda: gauge_is(1.0), timeout=15, what="evbridge_sink_up 1 again")
    finally:
        broker.stop_broker()
    messages = [str(r.get("message", "")) for r in srv.logs()]
    down = [m for m in messages if m.startswith("kafka sink kafka is down")]
    up = [m for m in messages if m.startswith("kafka sink kafka is connected to")]
    assert len(down) == 2, down
    assert len(up) == 2, up
