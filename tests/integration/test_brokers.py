"""The broker fixtures and helpers of tests/brokers.py, checked against the real brokers."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import aio_pika
import pytest
from aiokafka import AIOKafkaProducer  # type: ignore[import-untyped]
from pamqp.commands import Basic

from tests.brokers import (
    _NODE_ROOT,
    LOCALHOST,
    KafkaBroker,
    KafkaBrokerFactory,
    NoidaBroker,
    RabbitMQ,
    RabbitMQNode,
    RestartSentinel,
    TcpProxy,
    _pid_alive,
    _reap_orphan_nodes,
    consume_all,
    create_topic,
    free_port,
    unique_name,
    wait_until,
)

# Not a binary string a text codec would survive: proves bytes go through untouched.
BINARY = bytes(range(256))


@contextlib.asynccontextmanager
async def producer(bootstrap: str, **config: object) -> AsyncIterator[AIOKafkaProducer]:
    prod = AIOKafkaProducer(bootstrap_servers=bootstrap, request_timeout_ms=5000, **config)
    await prod.start()
    try:
        yield prod
    finally:
        await prod.stop()


# --------------------------------------------------------------------------- Tansu


async def test_tansu_round_trip_keeps_key_value_headers_partition_offset(
    kafka_broker: KafkaBroker,
) -> None:
    topic = await create_topic(kafka_broker.bootstrap, unique_name("roundtrip"), partitions=3)
    sent = [
        (b"key-0", BINARY, [("trace", b"t0"), ("empty", b"")], 0),
        (b"key-1", b"second", [("trace", b"t1")], 2),
        (None, b"keyless", [], 2),
    ]
    async with producer(kafka_broker.bootstrap, acks="all") as prod:
        assert await prod.partitions_for(topic) == {0, 1, 2}
        acked = [
            await prod.send_and_wait(topic, value, key=key, headers=headers, partition=partition)
            for key, value, headers, partition in sent
        ]
    assert [(m.partition, m.offset) for m in acked] == [(0, 0), (2, 0), (2, 1)]

    got = await consume_all(kafka_broker.bootstrap, topic, n=3, timeout=10)

    assert sorted(got, key=lambda r: (r.partition, r.offset)) == [
        (b"key-0", BINARY, (("trace", b"t0"), ("empty", b"")), 0, 0),
        (b"key-1", b"second", (("trace", b"t1"),), 2, 0),
        (None, b"keyless", (), 2, 1),
    ]


async def test_consume_all_reports_what_is_missing(kafka_broker: KafkaBroker) -> None:
    topic = await create_topic(kafka_broker.bootstrap, unique_name("short"))
    async with producer(kafka_broker.bootstrap) as prod:
        await prod.send_and_wait(topic, b"only one")

    with pytest.raises(AssertionError, match=r"read 1 of 2 records"):
        await consume_all(kafka_broker.bootstrap, topic, n=2, timeout=2.5)


# --------------------------------------------------------------------------- noida-db


async def test_noida_idempotent_producer_and_data_survive_a_restart(
    noida_broker: NoidaBroker,
) -> None:
    topic = await create_topic(noida_broker.bootstrap, unique_name("restart"), partitions=2)
    values = [f"v{i}".encode() for i in range(20)]
    async with producer(noida_broker.bootstrap, enable_idempotence=True, acks="all") as prod:
        acked = [
            await prod.send_and_wait(topic, v, key=b"k", partition=i % 2)
            for i, v in enumerate(values)
        ]
    assert sorted((m.partition, m.offset) for m in acked) == sorted(
        (p, o) for p in (0, 1) for o in range(10)
    )

    await noida_broker.stop()
    assert not noida_broker.running
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((LOCALHOST, noida_broker.port), timeout=1).close()
    await noida_broker.start()

    got = await consume_all(noida_broker.bootstrap, topic, n=20, timeout=10)
    assert sorted((r.partition, r.offset, r.value) for r in got) == sorted(
        (i % 2, i // 2, v) for i, v in enumerate(values)
    )
    # The restarted broker still takes idempotent writes, after the restored offsets.
    async with producer(noida_broker.bootstrap, enable_idempotence=True, acks="all") as prod:
        after = await prod.send_and_wait(topic, b"after", partition=0)
    assert after.offset == 10


async def test_noida_comes_back_after_a_crash(noida_broker: NoidaBroker) -> None:
    topic = await create_topic(noida_broker.bootstrap, unique_name("crash"))

    await noida_broker.kill()
    assert not noida_broker.running
    await noida_broker.start()

    # What a crash keeps is noida's business; the fixture promises a working broker again.
    async with producer(noida_broker.bootstrap, enable_idempotence=True, acks="all") as prod:
        await prod.send_and_wait(topic, b"after the crash")
    got = await consume_all(noida_broker.bootstrap, topic, n=1, timeout=10)
    assert [r.value for r in got] == [b"after the crash"]


# --------------------------------------------------------------------------- RabbitMQ


async def test_rabbitmq_publish_with_confirm_and_get_back(rabbitmq: RabbitMQ) -> None:
    name = unique_name("brokers-test")
    connection = await aio_pika.connect(rabbitmq.url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        exchange = await channel.declare_exchange(name, aio_pika.ExchangeType.DIRECT)
        queue = await channel.declare_queue(name)
        try:
            await queue.bind(exchange, routing_key="rk")
            confirmation = await exchange.publish(
                aio_pika.Message(
                    BINARY,
                    headers={"trace": "t0"},
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    message_id="m-1",
                ),
                routing_key="rk",
                mandatory=True,
            )
            assert isinstance(confirmation, Basic.Ack)

            message = await queue.get(timeout=5)
            await message.ack()
            assert message.body == BINARY
            assert message.headers == {"trace": "t0"}
            assert message.message_id == "m-1"
            assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
        finally:
            await queue.delete(if_unused=False, if_empty=False)
            await exchange.delete()


async def _declare_queues(url: str, prefix: str) -> tuple[str, str]:
    """A durable queue holding one persistent message, and a transient queue; their names."""
    durable, transient = unique_name(f"{prefix}-durable"), unique_name(f"{prefix}-transient")
    async with await aio_pika.connect(url) as connection:
        channel = await connection.channel()
        await channel.declare_queue(durable, durable=True)
        await channel.declare_queue(transient, durable=False)
        await channel.default_exchange.publish(
            aio_pika.Message(b"kept", delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
            routing_key=durable,
        )
    return durable, transient


async def _queue_exists(url: str, name: str) -> bool:
    async with await aio_pika.connect(url) as connection:
        try:
            await (await connection.channel()).declare_queue(name, passive=True)
        except aio_pika.exceptions.ChannelNotFoundEntity:
            return False
        return True


async def _get_one(url: str, queue_name: str) -> bytes:
    async with await aio_pika.connect(url) as connection:
        queue = await (await connection.channel()).get_queue(queue_name)
        message = await queue.get(timeout=5)
        await message.ack()
        await queue.delete(if_unused=False, if_empty=False)
        return message.body


@pytest.mark.slow
def test_private_rabbitmq_is_a_node_of_its_own(private_rabbitmq: RabbitMQNode) -> None:
    node = private_rabbitmq
    assert node.node.startswith(f"evbridge-test-{os.getpid()}-"), node.node
    assert node.node.endswith("@localhost")
    assert 5672 not in (node.port, node.dist_port)
    assert node.port != node.dist_port
    assert node.url == f"amqp://guest:guest@127.0.0.1:{node.port}/"
    assert node.running
    assert node.pid is not None
    assert node.pid != os.getpid()
    # The server drops root to the rabbitmq user, which must own its folder.
    if os.geteuid() == 0:
        owner = pwd.getpwuid(node.folder.stat().st_uid).pw_name
        assert owner == "rabbitmq"
        assert pwd.getpwuid(Path(f"/proc/{node.pid}").stat().st_uid).pw_name == "rabbitmq"


@pytest.mark.slow
async def test_private_rabbitmq_stop_app_and_start_app(
    private_rabbitmq: RabbitMQNode, rabbitmq: RabbitMQ
) -> None:
    node = private_rabbitmq
    durable, transient = await _declare_queues(node.url, "stop-app")
    sentinel = RestartSentinel(node.url)
    assert await sentinel.plant()
    pid = node.pid

    await node.stop_app()
    assert node.app_stopped
    assert not await node.answers()
    assert node.running, "stop_app leaves the Erlang VM running"
    assert node.pid == pid
    assert await rabbitmq.answers(), "the machine's broker is untouched"

    await node.start_app()
    assert not node.app_stopped
    assert await node.answers()
    assert node.pid == pid
    assert not await _queue_exists(node.url, transient)
    assert await _get_one(node.url, durable) == b"kept"
    # What the run-wide guard on the machine's broker relies on.
    assert await sentinel.problem() == f"its transient sentinel queue {sentinel.queue!r} is gone"


@pytest.mark.slow
async def test_private_rabbitmq_stop_and_start_the_whole_node(
    private_rabbitmq: RabbitMQNode, rabbitmq: RabbitMQ
) -> None:
    node = private_rabbitmq
    durable, transient = await _declare_queues(node.url, "stop-node")
    old_pid = node.pid
    assert old_pid is not None

    await node.stop()
    assert not node.running
    assert not _pid_alive(old_pid), "the node's VM is gone, not just its app"
    assert not await node.answers()
    assert await rabbitmq.answers(), "the machine's broker is untouched"

    await node.start()
    assert node.running
    assert node.pid != old_pid
    assert await node.answers()
    assert not await _queue_exists(node.url, transient)
    assert await _get_one(node.url, durable) == b"kept"


def test_restart_sentinel_sees_a_broker_that_ran_throughout(rabbitmq: RabbitMQ) -> None:
    sentinel = RestartSentinel(rabbitmq.url)

    async def check() -> str | None:
        assert await sentinel.plant()
        return await sentinel.problem()

    assert asyncio.run(check()) is None


async def test_restart_sentinel_reports_a_broker_that_went_away() -> None:
    sentinel = RestartSentinel(f"amqp://guest:guest@127.0.0.1:{free_port()}/")
    assert not await sentinel.plant()
    assert "does not accept connections" in (await sentinel.problem() or "")


@pytest.mark.slow
def test_nodes_left_by_a_killed_run_are_reaped() -> None:
    # A run killed before its teardown leaves its node running; the next run stops it.
    dead = subprocess.Popen(["true"])
    dead.wait()
    root = _NODE_ROOT / unique_name("reap-test")
    orphan = RabbitMQNode(root, owner=dead.pid)
    try:
        orphan.boot()
        pid = orphan.pid
        assert pid is not None
        assert orphan.running

        _reap_orphan_nodes(root)

        assert not _pid_alive(pid), "the orphan node was killed"
        assert list(root.iterdir()) == [], "and its folder removed"
    finally:
        orphan.close()
        shutil.rmtree(root, ignore_errors=True)


# --------------------------------------------------------------------------- TcpProxy


@contextlib.asynccontextmanager
async def echo_server() -> AsyncIterator[int]:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(4096):
                writer.write(data)
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, LOCALHOST, 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


@contextlib.asynccontextmanager
async def client(port: int) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection(LOCALHOST, port)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def round_trip(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes
) -> bytes:
    writer.write(data)
    await writer.drain()
    return await asyncio.wait_for(reader.readexactly(len(data)), timeout=2)


async def test_proxy_cut_breaks_live_connections_and_accept_lets_new_ones_in() -> None:
    async with echo_server() as port, TcpProxy(LOCALHOST, port) as proxy:
        async with client(proxy.port) as (reader, writer):
            assert await round_trip(reader, writer, b"ping") == b"ping"
            assert proxy.active_connections == 1

            assert await proxy.cut() == 1
            assert proxy.active_connections == 0
            # The reset reaches the client: reading fails or ends, nothing is echoed.
            with contextlib.suppress(ConnectionResetError):
                assert await asyncio.wait_for(reader.read(), timeout=2) == b""

        await proxy.refuse()
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection(LOCALHOST, proxy.port)

        await proxy.accept()
        async with client(proxy.port) as (reader, writer):
            assert await round_trip(reader, writer, b"again") == b"again"
        assert proxy.connections_total == 2


async def test_proxy_refuse_leaves_live_connections_alone() -> None:
    async with (
        echo_server() as port,
        TcpProxy(LOCALHOST, port) as proxy,
        client(proxy.port) as (reader, writer),
    ):
        await proxy.refuse()
        assert await round_trip(reader, writer, b"still here") == b"still here"


async def test_proxy_blackhole_holds_bytes_until_accept() -> None:
    async with (
        echo_server() as port,
        TcpProxy(LOCALHOST, port) as proxy,
        client(proxy.port) as (reader, writer),
    ):
        assert await round_trip(reader, writer, b"before") == b"before"
        await proxy.blackhole()
        writer.write(b"held")
        await writer.drain()
        # Proving that nothing arrives takes waiting a while; 0.3 s is plenty on loopback.
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(reader.read(1), timeout=0.3)
        # A new connection is accepted by the blackhole, and then hears nothing either.
        async with client(proxy.port) as (new_reader, new_writer):
            new_writer.write(b"new")
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(new_reader.read(1), timeout=0.1)

            await proxy.accept()
            assert await asyncio.wait_for(reader.readexactly(4), timeout=2) == b"held"
            assert await asyncio.wait_for(new_reader.readexactly(3), timeout=2) == b"new"


async def test_proxy_adds_latency_each_way() -> None:
    async with (
        echo_server() as port,
        TcpProxy(LOCALHOST, port, latency=0.1) as proxy,
        client(proxy.port) as (reader, writer),
    ):
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert await round_trip(reader, writer, b"slow") == b"slow"
        assert loop.time() - started >= 0.2  # 0.1 s to the target, 0.1 s back


async def test_kafka_behind_proxy_reconnects_after_cut(
    kafka_broker_factory: KafkaBrokerFactory,
) -> None:
    port = free_port()
    async with TcpProxy(LOCALHOST, port) as proxy:
        broker = await kafka_broker_factory(port=port, advertised_port=proxy.port)
        assert broker.advertised == proxy.address
        topic = await create_topic(proxy.address, unique_name("proxied"))
        async with producer(proxy.address, acks="all") as prod:
            first = await prod.send_and_wait(topic, b"first")
            assert await proxy.cut() >= 1
            # The producer notices the reset and reconnects through the proxy.
            second = await asyncio.wait_for(prod.send_and_wait(topic, b"second"), timeout=10)
        assert (first.offset, second.offset) == (0, 1)
        await wait_until(lambda: proxy.active_connections == 0, timeout=5, what="clients gone")

        got = await consume_all(proxy.address, topic, n=2, timeout=10)
        assert [r.value for r in got] == [b"first", b"second"]
