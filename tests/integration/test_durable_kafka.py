"""Durable delivery to Kafka (Tansu) through the real server: kill -9, outage, corruption,
a full spool, dead letters.

Tansu keeps its data in memory, so the *bridge* is what gets killed and restarted; the
broker stays up (or is cut off behind a `TcpProxy` for the outage)."""

from __future__ import annotations

import asyncio
import json
import random
import re
import signal
from pathlib import Path
from typing import Any

import pytest

from bridge.spool.framing import HEADER_SIZE, Record, scan_segment
from tests.brokers import (
    LOCALHOST,
    KafkaBroker,
    KafkaBrokerFactory,
    TcpProxy,
    create_topic,
    free_port,
    unique_name,
    wait_until,
)
from tests.integration.conftest import ServerFactory
from tests.integration.durable_support import (
    Load,
    durable_config,
    event,
    kafka_ids,
    readyz,
    seqs_per_client,
    spool_metric,
    wait_drained,
)
from tests.integration.server_process import ServerProcess

_RECOVERED = re.compile(r"recovered: (\d+) pending records")


def kafka_sink(bootstrap: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": "kafka",
        "type": "kafka",
        "bootstrap_servers": bootstrap,
        "request_timeout_ms": 5000,
        "health_timeout_ms": 500,
        **extra,
    }


def recovered_in(srv: ServerProcess) -> int:
    """Records this server found pending at startup (from its log; 0 if none)."""
    for record in srv.logs():
        found = _RECOVERED.search(str(record.get("message", "")))
        if found:
            return int(found.group(1))
    return 0


async def start(factory: ServerFactory, config: dict[str, Any], **kwargs: Any) -> ServerProcess:
    # In a thread: a TcpProxy on this loop must keep forwarding while the server starts.
    return await asyncio.to_thread(factory, config, **kwargs)


async def kill(srv: ServerProcess) -> None:
    srv.send_signal(signal.SIGKILL)
    await srv.wait_exit()


@pytest.mark.slow
async def test_kill_9_at_any_moment_loses_no_acknowledged_event(
    kafka_broker: KafkaBroker, evbridge_server_factory: ServerFactory, tmp_path: Path
) -> None:
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    topic = await create_topic(kafka_broker.bootstrap, unique_name("durable-crash"), 3)
    config = durable_config(
        tmp_path / "spool",
        [kafka_sink(kafka_broker.bootstrap)],
        [{"name": "all", "match": "*", "sink": "kafka", "topic": topic}],
    )
    acked: list[str] = []
    servers: list[ServerProcess] = []
    # Kill points: during ingest; right after clients stop (delivery busy); during startup.
    for round_no, point in enumerate(("ingest", "delivery", "ingest", "startup")):
        if point == "startup":
            srv = await start(evbridge_server_factory, config, wait_started=False)
            servers.append(srv)
            lock = tmp_path / "spool" / "LOCK"
            await wait_until(
                lambda srv=srv, lock=lock: (
                    lock.exists() and lock.read_text().strip() == str(srv.pid)
                ),
                timeout=20,
                what="the restarted bridge to open the spool",
            )
            await kill(srv)
            continue
        srv = await start(evbridge_server_factory, config)
        servers.append(srv)
        load = Load(srv, f"r{round_no}")
        stop = asyncio.Event()
        clients = asyncio.create_task(load.run(stop))
        threshold = rng.randint(50, 600)
        await wait_until(
            lambda load=load, threshold=threshold: len(load.acked) >= threshold,
            timeout=20,
            what=f"{threshold} acknowledged events",
        )
        if point == "delivery":
            stop.set()
            await clients
        await kill(srv)
        stop.set()
        await clients
        acked.extend(load.acked)
        assert not set(load.acked) - load.sent
    srv = await start(evbridge_server_factory, config)
    servers.append(srv)
    await wait_drained(srv)

    records = await kafka_ids(kafka_broker.bootstrap, topic, acked)
    ids = [event_id for event_id, _, _ in records]
    recovered = sum(recovered_in(s) for s in servers)
    duplicates = len(ids) - len(set(ids))
    print(
        f"seed {seed}: {len(acked)} acknowledged, {len(ids)} records, "
        f"{duplicates} duplicates, {recovered} recovered at restarts"
    )
    assert not set(acked) - set(ids), f"seed {seed}: acknowledged events were lost"
    assert duplicates <= recovered, f"seed {seed}"
    assert await spool_metric(srv, "evbridge_spool_recovered_total") == recovered_in(srv)


async def test_a_broker_outage_is_absorbed_and_delivered_in_order(
    kafka_broker_factory: KafkaBrokerFactory,
    evbridge_server_factory: ServerFactory,
    tmp_path: Path,
) -> None:
    port = free_port()
    async with TcpProxy(LOCALHOST, port) as proxy:
        await kafka_broker_factory(port=port, advertised_port=proxy.port)
        topic = await create_topic(proxy.address, unique_name("durable-outage"), 2)
        config = durable_config(
            tmp_path / "spool",
            [kafka_sink(proxy.address)],
            [{"name": "all", "match": "*", "sink": "kafka", "topic": topic}],
        )
        srv = await start(evbridge_server_factory, config)
        await proxy.refuse()
        await proxy.cut()

        async def client(n: int) -> list[str]:
            ids = []
            async with srv.session() as http:
                for seq in range(40):
                    body = event(f"c{n}-{seq}", f"k{n}", seq)
                    async with http.post("/v1/events", json=body) as r:
                        assert r.status == 202, await r.text()
                        assert (await r.json())["status"] == "spooled"
                    ids.append(body["id"])
            return ids

        sent = [i for ids in await asyncio.gather(*(client(n) for n in range(5))) for i in ids]
        assert await spool_metric(srv, "evbridge_spool_events", "kafka") == 200

        async def reflects_outage() -> bool:
            status, body = await readyz(srv)
            return status == 200 and not body["sinks"]["kafka"]["ok"]

        await wait_until(reflects_outage, timeout=10, what="/readyz to show the broker down")
        _, body = await readyz(srv)
        assert body["spool"]["pending"]["kafka"]["events"] == 200
        assert body["spool"]["pending"]["kafka"]["oldest_age_s"] > 0
        assert await spool_metric(srv, "evbridge_delivery_retries_total", "kafka") > 0

        await proxy.accept()
        await wait_drained(srv)
        records = await kafka_ids(proxy.address, topic, sent)
        order = seqs_per_client(event_id for event_id, _, _ in records)
        assert order == {f"c{n}": list(range(40)) for n in range(5)}
        assert {k for _, k, _ in records} == {f"k{n}".encode() for n in range(5)}


async def test_a_corrupt_spool_is_repaired_at_startup(
    kafka_broker: KafkaBroker, evbridge_server_factory: ServerFactory, tmp_path: Path
) -> None:
    topic = await create_topic(kafka_broker.bootstrap, unique_name("durable-corrupt"))
    route = {"name": "all", "match": "*", "sink": "kafka", "topic": topic}
    nowhere = f"{LOCALHOST}:{free_port()}"  # no broker: events stay in the spool
    down = durable_config(tmp_path / "spool", [kafka_sink(nowhere)], [route])
    srv = await start(evbridge_server_factory, down)
    for seq in range(30):
        status, body = await srv.emit(event(f"c-{seq}", "k", seq))
        assert status == 202, body
    await kill(srv)

    (segment,) = (tmp_path / "spool" / "pending").glob("*.seg")
    with segment.open("rb") as file:
        records = [r for r in scan_segment(file) if isinstance(r, Record)]
    assert len(records) == 30
    data = bytearray(segment.read_bytes())
    data[records[10].offset + HEADER_SIZE + 5] ^= 0xFF  # a flipped byte inside record 10
    del data[-5:]  # and a torn tail: record 29 loses its end
    segment.write_bytes(bytes(data))

    up = durable_config(tmp_path / "spool", [kafka_sink(kafka_broker.bootstrap)], [route])
    srv = await start(evbridge_server_factory, up)
    await wait_drained(srv)
    assert await spool_metric(srv, "evbridge_spool_corrupt_records_total") == 2
    messages = [str(r.get("message", "")) for r in srv.logs()]
    assert sum("torn or corrupt tail" in m for m in messages) == 1
    assert sum("damaged bytes at offset" in m for m in messages) == 1
    status, body = await srv.emit(event("c-after", "k", 99))
    assert status == 202
    good = [f"c-{seq}" for seq in range(29) if seq != 10]
    found = await kafka_ids(kafka_broker.bootstrap, topic, [*good, "c-after"])
    assert {i for i, _, _ in found} == {*good, "c-after"}


async def test_a_full_spool_refuses_with_503_and_loses_nothing(
    kafka_broker_factory: KafkaBrokerFactory,
    evbridge_server_factory: ServerFactory,
    tmp_path: Path,
) -> None:
    port = free_port()
    async with TcpProxy(LOCALHOST, port) as proxy:
        await kafka_broker_factory(port=port, advertised_port=proxy.port)
        topic = await create_topic(proxy.address, unique_name("durable-full"))
        config = durable_config(
            tmp_path / "spool",
            [kafka_sink(proxy.address)],
            [{"name": "all", "match": "*", "sink": "kafka", "topic": topic}],
            max_spool_bytes=32 * 1024,
        )
        srv = await start(evbridge_server_factory, config)
        await proxy.refuse()
        await proxy.cut()
        accepted: list[str] = []
        async with srv.session() as http:
            for seq in range(1000):
                body = event(f"f-{seq}", "k", seq, pad="x" * 100)
                async with http.post("/v1/events", json=body) as r:
                    answer = await r.json()
                    if r.status == 503:
                        assert answer["error"]["code"] == "spool_full"
                        assert int(r.headers["Retry-After"]) >= 1
                        break
                    assert r.status == 202, answer
                    accepted.append(body["id"])
            else:
                pytest.fail("the spool never filled up")
            # A batch is refused as a whole, each event with the same retriable error.
            batch = [event(f"b-{i}", "k", i) for i in range(3)]
            async with http.post("/v1/events/batch", json=batch) as r:
                results = (await r.json())["results"]
            assert {(x["status"], x["error"]["code"]) for x in results} == {
                ("rejected", "spool_full")
            }
        status, ready = await readyz(srv)
        assert status == 503
        assert any("spool is full" in reason for reason in ready["not_ready"])
        assert ready["spool"]["full"]

        await proxy.accept()
        await wait_drained(srv)

        async def ready_again() -> bool:
            return (await readyz(srv))[0] == 200

        await wait_until(ready_again, timeout=10, what="/readyz 200 once space came back")
        status, body = await srv.emit(event("f-9999", "k", 9999))
        assert status == 202
        found = await kafka_ids(proxy.address, topic, [*accepted, "f-9999"])
        assert seqs_per_client(i for i, _, _ in found)["f"] == [*range(len(accepted)), 9999]


async def test_a_message_too_large_is_dead_lettered_to_a_file_with_its_reason(
    kafka_broker: KafkaBroker, evbridge_server_factory: ServerFactory, tmp_path: Path
) -> None:
    topic = await create_topic(kafka_broker.bootstrap, unique_name("durable-dlq"))
    dead_file = tmp_path / "dead.jsonl"
    config = durable_config(
        tmp_path / "spool",
        [
            kafka_sink(kafka_broker.bootstrap, max_message_bytes=4096),
            {"name": "dlq", "type": "file", "path": str(dead_file)},
        ],
        [
            {
                "name": "all",
                "match": "*",
                "sink": "kafka",
                "topic": topic,
                "dead_letter": {"sink": "dlq"},
            }
        ],
    )
    srv = await start(evbridge_server_factory, config)
    status, _ = await srv.emit(event("small-1", "k", 1))
    assert status == 202
    status, _ = await srv.emit(event("huge", "k", 2, blob="x" * 20_000))
    assert status == 202
    status, _ = await srv.emit(event("small-2", "k", 3))
    assert status == 202
    await wait_drained(srv)
    delivered = await kafka_ids(kafka_broker.bootstrap, topic, ["small-1", "small-2"])
    assert [i for i, _, _ in delivered] == ["small-1", "small-2"]
    (line,) = dead_file.read_text().splitlines()
    dead = json.loads(line)
    assert dead["id"] == "huge"
    assert dead["headers"]["evbridge-dead-letter-code"] == "message_too_large"
    assert dead["headers"]["evbridge-dead-letter-reason"]
    assert dead["headers"]["evbridge-dead-letter-destination"] == topic
    counted = await spool_metric(srv, "evbridge_dead_lettered_total", "kafka")
    assert counted == 1
