"""The forged-record attack through the real server and RabbitMQ: a client posts binary-mode
bodies that hold complete, checksummed spool records for a destination of its choosing;
the spool file is torn or a bit flips; after the restart nothing forged is delivered."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import aio_pika
import pytest

from bridge.event import Event
from bridge.sinks.base import Outgoing
from bridge.sinks.rabbitmq import RabbitRoute
from bridge.spool import codec, framing
from tests.brokers import LOCALHOST, RabbitMQ, free_port, unique_name
from tests.integration.conftest import ServerFactory
from tests.integration.durable_support import durable_config, rabbit_ids, wait_drained
from tests.integration.server_process import ServerProcess

N = 6
FORGED = "forged-by-client"


class _Unchecked(Event, frozen=True):
    def __post_init__(self) -> None:
        pass


def body(attacker_exchange: str) -> bytes:
    event = _Unchecked(
        type="spool.attack",
        id=FORGED,
        source="attacker",
        data="owned",
        headers={"Bad Name": "x\r\nInjected: 1"},
    )
    route = RabbitRoute(exchange=attacker_exchange, routing_key="stolen")
    record = framing.frame(codec.encode("rmq", Outgoing(event, "all", route, None)), b"EVS1")
    return b"\x00" * 11 + record + record + b"\xff" * 80


def sink(url: str, exchange: str) -> dict[str, Any]:
    return {
        "name": "rmq",
        "type": "rabbitmq",
        "url": url,
        "exchange": exchange,
        "confirm_timeout_s": 5,
        "health_timeout_s": 0.5,
        "reconnect_max_s": 0.5,
    }


async def post_binary(srv: ServerProcess, event_id: str, data: bytes) -> int:
    headers = {
        "ce-specversion": "1.0",
        "ce-id": event_id,
        "ce-type": "spool.attack",
        "ce-source": "test",
        "Content-Type": "application/octet-stream",
    }
    async with srv.session() as http, http.post("/v1/events", data=data, headers=headers) as r:
        return r.status


def records(segment: Path) -> list[framing.Record]:
    with segment.open("rb") as file:
        return [r for r in framing.scan_segment(file) if isinstance(r, framing.Record)]


@pytest.mark.parametrize("damage", ["torn-tail", "bit-flip"])
async def test_forged_records_in_client_data_are_never_delivered(
    rabbitmq: RabbitMQ, evbridge_server_factory: ServerFactory, tmp_path: Path, damage: str
) -> None:
    exchange, attacker = unique_name("spool-real"), unique_name("spool-attacker")
    async with await aio_pika.connect(rabbitmq.url) as connection:
        channel = await connection.channel()
        queues = {}
        for name in (exchange, attacker):
            ex = await channel.declare_exchange(name, aio_pika.ExchangeType.TOPIC, durable=True)
            queues[name] = await channel.declare_queue(name, durable=True)
            await queues[name].bind(ex, routing_key="#")
        try:
            route = {"name": "all", "match": "*", "sink": "rmq"}
            nowhere = f"amqp://guest:guest@{LOCALHOST}:{free_port()}/"
            spool = tmp_path / "spool"
            down = await asyncio.to_thread(
                evbridge_server_factory, durable_config(spool, [sink(nowhere, exchange)], [route])
            )
            for i in range(N):
                assert await post_binary(down, f"real-{i}", body(attacker)) == 202
            down.send_signal(signal.SIGKILL)
            await down.wait_exit()

            (segment,) = (spool / "pending").glob("*.seg")
            found = records(segment)
            assert len(found) == N
            data = bytearray(segment.read_bytes())
            if damage == "torn-tail":
                del data[-40:]  # the last record is torn after the forged ones inside it
                kept = [f"real-{i}" for i in range(N - 1)]
            else:
                data[found[2].offset + 6] ^= 0x04  # record 2's header: its length is wrong
                kept = [f"real-{i}" for i in range(N) if i != 2]
            segment.write_bytes(bytes(data))

            up = await asyncio.to_thread(
                evbridge_server_factory,
                durable_config(spool, [sink(rabbitmq.url, exchange)], [route]),
            )
            await wait_drained(up)
            got = await rabbit_ids(queues[exchange], kept)
            assert sorted(str(m.message_id) for m in got) == sorted(kept)
            stolen = await queues[attacker].get(no_ack=True, fail=False)
            assert stolen is None, "a forged record reached the exchange it named"
        finally:
            for name in (exchange, attacker):
                await channel.queue_delete(name)
                await channel.exchange_delete(name)
