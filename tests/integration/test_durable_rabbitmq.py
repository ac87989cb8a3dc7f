"""Durable delivery to RabbitMQ through the real server: kill -9, outage (behind a
`TcpProxy`, so the shared broker keeps running), dead letters, replay with the CLI."""

from __future__ import annotations

import asyncio
import json
import random
import signal
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aio_pika
import pytest

from tests.brokers import LOCALHOST, RabbitMQ, TcpProxy, unique_name, wait_until
from tests.integration.conftest import ServerFactory
from tests.integration.durable_support import (
    Load,
    durable_config,
    event,
    rabbit_ids,
    readyz,
    seqs_per_client,
    spool_metric,
    wait_drained,
)
from tests.integration.server_process import ServerProcess, evbridge_command
from tests.integration.test_durable_kafka import recovered_in


class Destination:
    """A durable topic exchange with a durable queue bound to ``#``."""

    def __init__(self, name: str, queue: aio_pika.abc.AbstractQueue) -> None:
        self.name = name
        self.queue = queue


@pytest.fixture
async def channel(rabbitmq: RabbitMQ) -> AsyncIterator[aio_pika.abc.AbstractChannel]:
    async with await aio_pika.connect(rabbitmq.url) as connection:
        yield await connection.channel()


async def declare(
    channel: aio_pika.abc.AbstractChannel, name: str | None = None, binding: str = "#"
) -> Destination:
    name = name or unique_name("durable-rmq")
    exchange = await channel.declare_exchange(name, aio_pika.ExchangeType.TOPIC, durable=True)
    queue = await channel.declare_queue(name, durable=True)
    await queue.bind(exchange, routing_key=binding)
    return Destination(name, queue)


async def remove(channel: aio_pika.abc.AbstractChannel, *destinations: Destination) -> None:
    for destination in destinations:
        await channel.queue_delete(destination.name)
        await channel.exchange_delete(destination.name)


def rabbit_sink(url: str, exchange: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": "rmq",
        "type": "rabbitmq",
        "url": url,
        "exchange": exchange,
        "confirm_timeout_s": 5,
        "health_timeout_s": 0.5,
        "reconnect_max_s": 0.5,
        **extra,
    }


async def start(factory: ServerFactory, config: dict[str, Any], **kwargs: Any) -> ServerProcess:
    return await asyncio.to_thread(factory, config, **kwargs)


@pytest.mark.slow
async def test_kill_9_at_any_moment_loses_no_acknowledged_event(
    rabbitmq: RabbitMQ,
    channel: aio_pika.abc.AbstractChannel,
    evbridge_server_factory: ServerFactory,
    tmp_path: Path,
) -> None:
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    dest = await declare(channel)
    config = durable_config(
        tmp_path / "spool",
        [rabbit_sink(rabbitmq.url, dest.name)],
        [{"name": "all", "match": "*", "sink": "rmq", "routing_key": "{key}"}],
    )
    acked: list[str] = []
    servers: list[ServerProcess] = []
    try:
        for round_no, point in enumerate(("ingest", "delivery", "ingest")):
            srv = await start(evbridge_server_factory, config)
            servers.append(srv)
            load = Load(srv, f"r{round_no}")
            stop = asyncio.Event()
            clients = asyncio.create_task(load.run(stop))
            threshold = rng.randint(50, 500)
            await wait_until(
                lambda load=load, threshold=threshold: len(load.acked) >= threshold,
                timeout=20,
                what=f"{threshold} acknowledged events",
            )
            if point == "delivery":
                stop.set()
                await clients
            srv.send_signal(signal.SIGKILL)
            await srv.wait_exit()
            stop.set()
            await clients
            acked.extend(load.acked)
        srv = await start(evbridge_server_factory, config)
        servers.append(srv)
        await wait_drained(srv)
        messages = await rabbit_ids(dest.queue, acked)
    finally:
        await remove(channel, dest)
    ids = [str(m.message_id) for m in messages]
    recovered = sum(recovered_in(s) for s in servers)
    duplicates = len(ids) - len(set(ids))
    print(
        f"seed {seed}: {len(acked)} acknowledged, {len(ids)} messages, "
        f"{duplicates} duplicates, {recovered} recovered at restarts"
    )
    assert not set(acked) - set(ids), f"seed {seed}: acknowledged events were lost"
    assert duplicates <= recovered, f"seed {seed}"


async def test_a_broker_outage_is_absorbed_and_delivered_in_order(
    rabbitmq: RabbitMQ,
    channel: aio_pika.abc.AbstractChannel,
    evbridge_server_factory: ServerFactory,
    tmp_path: Path,
) -> None:
    dest = await declare(channel)
    try:
        async with TcpProxy(LOCALHOST, 5672) as proxy:
            url = f"amqp://guest:guest@{proxy.address}/"
            config = durable_config(
                tmp_path / "spool",
                [rabbit_sink(url, dest.name)],
                [{"name": "all", "match": "*", "sink": "rmq", "routing_key": "{key}"}],
            )
            srv = await start(evbridge_server_factory, config)
            await proxy.refuse()
            await proxy.cut()

            async def client(n: int) -> list[str]:
                ids = []
                async with srv.session() as http:
                    for seq in range(30):
                        body = event(f"c{n}-{seq}", f"k{n}", seq)
                        async with http.post("/v1/events", json=body) as r:
                            assert r.status == 202, await r.text()
                        ids.append(body["id"])
                return ids

            sent = [i for ids in await asyncio.gather(*(client(n) for n in range(4))) for i in ids]

            async def reflects_outage() -> bool:
                status, body = await readyz(srv)
                pending = body.get("spool", {}).get("pending", {}).get("rmq", {})
                return status == 200 and not body["sinks"]["rmq"]["ok"] and pending
                # (a 200: events are still accepted; the body says what is wrong)

            await wait_until(reflects_outage, timeout=10, what="/readyz to show the outage")
            assert await spool_metric(srv, "evbridge_spool_events", "rmq") > 0
            await proxy.accept()
            await wait_drained(srv)
            messages = await rabbit_ids(dest.queue, sent)
    finally:
        await remove(channel, dest)
    order = seqs_per_client(str(m.message_id) for m in messages)
    assert order == {f"c{n}": list(range(30)) for n in range(4)}


# The dead-letter routing key as configured (a literal, or a template rendered from the
# dead letter: the event plus its evbridge-dead-letter-* headers) and as the broker sees it.
@pytest.mark.parametrize(
    ("dead_key", "routed_as"),
    [
        ("dead", "dead"),
        ("dead.{key}.{headers.evbridge-dead-letter-code}", "dead.nowhere.unroutable"),
    ],
)
async def test_an_unroutable_event_is_dead_lettered_with_its_reason(
    rabbitmq: RabbitMQ,
    channel: aio_pika.abc.AbstractChannel,
    evbridge_server_factory: ServerFactory,
    tmp_path: Path,
    dead_key: str,
    routed_as: str,
) -> None:
    dest = await declare(channel, binding="good.#")
    dlq = await declare(channel)
    try:
        config = durable_config(
            tmp_path / "spool",
            [rabbit_sink(rabbitmq.url, dest.name)],
            [
                {
                    "name": "all",
                    "match": "*",
                    "sink": "rmq",
                    "routing_key": "{key}",
                    "dead_letter": {
                        "sink": "rmq",
                        "exchange": dlq.name,
                        "routing_key": dead_key,
                    },
                }
            ],
        )
        srv = await start(evbridge_server_factory, config)
        for event_id, key in (("ok-1", "good.a"), ("lost", "nowhere"), ("ok-2", "good.b")):
            status, _ = await srv.emit(event(event_id, key, 0))
            assert status == 202
        await wait_drained(srv)
        delivered = await rabbit_ids(dest.queue, ["ok-1", "ok-2"])
        (dead,) = await rabbit_ids(dlq.queue, ["lost"])
        assert await spool_metric(srv, "evbridge_dead_lettered_total", "rmq") == 1
    finally:
        await remove(channel, dest, dlq)
    assert [m.message_id for m in delivered] == ["ok-1", "ok-2"]
    headers = dead.headers
    assert headers["evbridge-dead-letter-code"] == "unroutable"
    # Where it was headed, as the route names it (the sink's own exchange here).
    assert headers["evbridge-dead-letter-destination"] in (dest.name, "rmq")
    assert headers["evbridge-dead-letter-attempts"] == "1"
    assert dead.routing_key == routed_as


async def test_local_dead_letters_are_listed_and_replayed_with_the_cli(
    rabbitmq: RabbitMQ,
    channel: aio_pika.abc.AbstractChannel,
    evbridge_server_factory: ServerFactory,
    tmp_path: Path,
) -> None:
    sink_exchange = await declare(channel)
    missing = unique_name("durable-later")  # an exchange that does not exist yet
    config = durable_config(
        tmp_path / "spool",
        [rabbit_sink(rabbitmq.url, sink_exchange.name)],
        [{"name": "all", "match": "*", "sink": "rmq", "exchange": missing, "routing_key": "x"}],
    )
    later: Destination | None = None
    try:
        srv = await start(evbridge_server_factory, config)
        for seq in range(3):
            status, _ = await srv.emit(event(f"d-{seq}", "k", seq))
            assert status == 202
        await wait_drained(srv)

        def cli(*args: str) -> subprocess.CompletedProcess[str]:
            argv = [*evbridge_command(), "spool", *args, "--config", str(srv.config_path)]
            return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)

        status_out = await asyncio.to_thread(cli, "status", "--json")
        assert json.loads(status_out.stdout)["dead_letters"]["rmq"]["events"] == 3
        listed = await asyncio.to_thread(cli, "dead-letters", "--json")
        rows = [json.loads(line) for line in listed.stdout.splitlines()]
        assert [r["event_id"] for r in rows] == ["d-0", "d-1", "d-2"]
        assert {r["code"] for r in rows} == {"exchange_not_found"}

        later = await declare(channel, missing)
        replay = await asyncio.to_thread(cli, "replay-dead-letters")
        assert replay.returncode == 0, replay.stderr
        assert "3 dead letters moved back" in replay.stdout
        messages = await rabbit_ids(later.queue, ["d-0", "d-1", "d-2"])
        assert [m.message_id for m in messages] == ["d-0", "d-1", "d-2"]
        await wait_drained(srv)
        after = await asyncio.to_thread(cli, "status", "--json")
        assert json.loads(after.stdout)["dead_letters"] == {}
    finally:
        await remove(channel, sink_exchange, *([later] if later else []))
