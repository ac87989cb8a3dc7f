"""Contract target for the NATS sink: a per-test JetStream stream on the machine's server."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext

from bridge.sinks.base import RouteOptions
from bridge.sinks.nats import NatsConfig, NatsRoute, NatsSink
from tests.brokers import unique_name, wait_until
from tests.contract.target import Received
from tests.nats_broker import NATS_URL, add_stream, delete_stream, nats_client, nats_url


class NatsTarget:
    """The sink publishes to ``<prefix>.<n>``; one stream captures ``<prefix>.>``."""

    def __init__(self, js: JetStreamContext, prefix: str, stream: str) -> None:
        self.js = js
        self.prefix = prefix
        self.stream = stream
        self.sink = NatsSink(NatsConfig(name="nats", type="nats", servers=NATS_URL))
        self._routes = 0

    def route(self) -> RouteOptions:
        self._routes += 1
        return NatsRoute(subject=f"{self.prefix}.r{self._routes}")

    async def read(self, route: RouteOptions, n: int, timeout: float = 15.0) -> Sequence[Received]:
        assert isinstance(route, NatsRoute)
        found: list[Received] = []

        async def enough() -> bool:
            info = await self.js.stream_info(self.stream, subjects_filter=route.subject)
            return (info.state.subjects or {}).get(route.subject, 0) >= n

        await wait_until(enough, timeout=timeout, what=f"{n} messages on {route.subject}")
        seq = 0
        while len(found) < n:
            msg = await self.js.get_msg(self.stream, seq + 1, next=True, subject=route.subject)
            assert msg.seq is not None
            seq = msg.seq
            headers = msg.headers or {}
            found.append(
                Received(
                    headers["ce-id"], headers["ce-type"], msg.data or b"",
                    headers.get("ce-partitionkey"),
                )
            )  # fmt: skip
        return found


@pytest.fixture
async def target_nats(nats_client: Client) -> AsyncIterator[NatsTarget]:
    prefix = unique_name("contract").replace("-", "_")
    stream = await add_stream(NATS_URL, [f"{prefix}.>"])
    target = NatsTarget(nats_client.jetstream(), prefix, stream)
    await target.sink.start()
    try:
        yield target
    finally:
        await target.sink.stop()
        await delete_stream(NATS_URL, stream)


__all__ = ["nats_client", "nats_url", "target_nats"]
