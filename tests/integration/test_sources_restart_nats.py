"""The NATS JetStream source through a restart of a nats-server of the tests' own
(`NatsNode`, tests/nats_broker.py, with a file store that keeps the stream and the durable
consumer across the restart; the machine's server is never touched): under a backlog the
server is stopped (SIGTERM by its pid) and started again on the same port and store; the
source reconnects by itself and every message is handled at least once. The scenario is
in restart_support.py."""

from __future__ import annotations

import nats
import pytest
from nats.js.api import StreamConfig

from tests.brokers import unique_name
from tests.integration.restart_support import Consumer, restart_under_backlog
from tests.nats_broker import NatsNode, nats_node

__all__ = ["nats_node"]

pytestmark = pytest.mark.slow

BACKLOG = 300


async def test_the_source_reconnects_after_a_restart_and_loses_nothing(
    nats_node: NatsNode,
) -> None:
    node = nats_node
    await node.start()
    prefix = unique_name("restart").replace("-", "_")
    stream = prefix.upper()
    nc = await nats.connect(node.url)
    try:
        js = nc.jetstream()
        await js.add_stream(StreamConfig(name=stream, subjects=[f"{prefix}.>"]))
        for i in range(BACKLOG):
            await js.publish(f"{prefix}.order.created", b'{"n": %d}' % i)  # each one acked
    finally:
        await nc.close()

    consumer = Consumer(
        {"type": "nats", "servers": node.url, "stream": stream, "durable": "restart",
         "batch": 16, "ack_wait_s": 2.0, "fetch_wait_s": 0.2, "reconnect_max_s": 0.3,
         "probe_interval_s": 0.5},
    )  # fmt: skip

    async def take_down() -> None:
        node.stop()

    async def settled() -> bool:
        nc = await nats.connect(node.url)
        try:
            info = await nc.jetstream().consumer_info(stream, "restart")
        finally:
            await nc.close()
        return (info.num_pending, info.num_ack_pending) == (0, 0)

    await consumer.sidecar.start()
    try:
        await restart_under_backlog(consumer, BACKLOG, take_down, node.start, settled)
    finally:
        await consumer.sidecar.stop(10)
