"""The NATS JetStream sink through the real HTTP server (``evbridge serve`` as a subprocess).

Happy-path tests use the machine's NATS with a stream per test; the outage tests run
their own ``nats-server -js`` (`NatsNode`) and stop it by pid, never the machine's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import nats
import nats.js.errors
import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext

from tests.brokers import unique_name, wait_until
from tests.integration.conftest import ServerFactory
from tests.integration.server_process import ServerProcess
from tests.nats_broker import NatsNode, delete_stream, nats_client, nats_node, nats_url

__all__ = ["nats_client", "nats_node", "nats_url"]

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


class Stream:
    """A stream (``name``) the sink creates, capturing ``<prefix>.>``."""

    def __init__(self) -> None:
        self.prefix = unique_name("nats_srv").replace("-", "_")
        self.name = self.prefix.upper()

    def sink(self, servers: str, **fields: Any) -> dict[str, Any]:
        return {
            "name": "n",
            "type": "nats",
            "servers": servers,
            "create_stream": {"name": self.name, "subjects": [f"{self.prefix}.>"]},
            **fields,
        }

    def config(self, servers: str, **fields: Any) -> dict[str, Any]:
        return {
            "sinks": [self.sink(servers, **fields)],
            "routes": [{"match": "*", "sink": "n", "subject": f"{self.prefix}.{{type}}"}],
        }


@pytest.fixture
async def stream(nats_url: str) -> AsyncIterator[Stream]:
    made = Stream()
    yield made
    with contextlib.suppress(nats.js.errors.NotFoundError):  # made on a private server
        await delete_stream(nats_url, made.name)


async def ready_status(srv: ServerProcess) -> int:
    async with srv.session("metrics") as http, http.get("/readyz") as r:
        return r.status


async def ready(srv: ServerProcess) -> bool:
    return await ready_status(srv) == 200


async def post(srv: ServerProcess, event: dict[str, Any]) -> tuple[int, Any, float]:
    """(status, body, seconds taken) of one POST /v1/events."""
    loop = asyncio.get_running_loop()
    began = loop.time()
    status, body = await srv.emit(event)
    return status, body, loop.time() - began


async def test_events_are_stored_with_binding_headers_and_a_retry_is_dropped(
    nats_url: str, nats_client: Client, stream: Stream, evbridge_server_factory: ServerFactory
) -> None:
    config = stream.config(nats_url)
    config["routes"].insert(0, {"match": "lost.*", "sink": "n", "subject": "nowhere.{type}"})
    srv = evbridge_server_factory(config)
    event = {
        "id": unique_name("evt"),
        "type": "order.placed",
        "source": "/shop",
        "subject": "order/1",
        "key": "user-7",
        "data": {"order": 1, "text": "é✓"},
        "headers": {"x-tenant": "t1"},
        "correlation_id": "corr-1",
    }
    status, body = await srv.emit(event, headers={"traceparent": TRACEPARENT})
    assert status == 200, body
    [delivery] = body["deliveries"]
    assert delivery == {
        "sink": "n",
        "destination": f"{stream.prefix}.order.placed",
        "stream": stream.name,
        "seq": 1,
    }

    js: JetStreamContext = nats_client.jetstream()
    stored = await js.get_msg(stream.name, 1)
    assert stored.subject == f"{stream.prefix}.order.placed"
    assert json.loads(stored.data or b"") == {"order": 1, "text": "é✓"}
    headers = dict(stored.headers or {})
    time = headers.pop("ce-time")
    assert time
    assert headers == {
        "Nats-Msg-Id": event["id"],
        "ce-specversion": "1.0",
        "ce-id": event["id"],
        "ce-type": "order.placed",
        "ce-source": "/shop",
        "ce-subject": "order/1",
        "ce-partitionkey": "user-7",
        "ce-correlationid": "corr-1",
        "content-type": "application/json",
        "x-tenant": "t1",
        "traceparent": TRACEPARENT,
    }

    # A client retry of the same event id: JetStream's duplicate window keeps one copy.
    status, again = await srv.emit(event, headers={"traceparent": TRACEPARENT})
    assert status == 200, again
    assert again["deliveries"] == body["deliveries"]
    info = await js.stream_info(stream.name)
    assert info.state.messages == 1

    status, batch = await srv.emit_batch(
        [{"type": "note.added", "data": i} for i in range(3)] + [{"type": "lost.x", "data": 0}]
    )
    assert status == 200, batch
    results = batch["results"]
    assert [r["status"] for r in results] == ["published"] * 3 + ["rejected"]
    assert [r["deliveries"][0]["seq"] for r in results[:3]] == [2, 3, 4]
    error = results[3]["error"]
    assert (error["code"], error["retriable"], error["field"]) == ("no_stream", False, "subject")
    assert "nowhere.lost.x" in error["message"]

    async with srv.session() as http, http.get("/v1/info") as r:
        assert r.status == 200
        info_body = await r.json()
    [sink] = info_body["sinks"]
    assert (sink["name"], sink["type"], sink["ok"]) == ("n", "nats", True)
    assert sink["detail"] == f"connected to {nats_url}"
    assert await srv.metric("evbridge_sink_up", {"sink": "n"}) == 1.0


async def test_server_down_at_start_fails_fast_and_readyz_503_until_it_comes(
    nats_node: NatsNode, stream: Stream, evbridge_server_factory: ServerFactory
) -> None:
    srv = evbridge_server_factory(
        stream.config(nats_node.url, reconnect_max_s=0.2, connect_timeout_s=1),
        wait_ready=False,
    )
    assert await ready_status(srv) == 503
    assert await srv.metric("evbridge_sink_up", {"sink": "n"}) == 0.0
    for _ in range(3):
        status, body, took = await post(srv, {"type": "early"})
        assert status == 503, body
        assert body["error"]["code"] == "sink_unavailable"
        assert body["error"]["retriable"] is True
        assert took < 0.5  # fails fast: no wait for a connect
    await nats_node.start()
    await wait_until(lambda: ready(srv), timeout=15, what="/readyz to turn 200", interval=0.05)
    assert await srv.metric("evbridge_sink_up", {"sink": "n"}) == 1.0
    status, body, _ = await post(srv, {"type": "after.start", "data": 1})
    assert status == 200, body
    assert body["deliveries"][0]["stream"] == stream.name


async def test_server_lost_mid_run_and_back_recovers_without_a_restart(
    nats_node: NatsNode, stream: Stream, evbridge_server_factory: ServerFactory
) -> None:
    await nats_node.start()
    srv = evbridge_server_factory(stream.config(nats_node.url, reconnect_max_s=0.2))
    status, body, _ = await post(srv, {"type": "before", "data": 1})
    assert status == 200, body
    assert body["deliveries"][0]["seq"] == 1

    nats_node.stop()
    await wait_until(
        lambda: _gauge_is(srv, 0.0), timeout=10, what="evbridge_sink_up 0", interval=0.05
    )
    await wait_until(  # /readyz caches sink health for a moment
        lambda: _not_ready(srv), timeout=10, what="/readyz to turn 503", interval=0.05
    )
    for _ in range(5):
        status, body, took = await post(srv, {"type": "during"})
        assert status == 503, body
        assert body["error"]["retriable"] is True
        assert took < 0.5

    await nats_node.start()  # same port, same store: the stream is still there
    await wait_until(
        lambda: _gauge_is(srv, 1.0), timeout=15, what="evbridge_sink_up 1", interval=0.05
    )
    status, body, _ = await post(srv, {"type": "after", "data": 2})
    assert status == 200, body
    assert body["deliveries"][0]["seq"] == 2
    down_lines = [line for line in srv.logs() if "is down" in str(line.get("message", ""))]
    assert len(down_lines) == 1, down_lines  # one line for the outage, not one per retry

    async with await nats.connect(nats_node.url) as nc:
        info = await nc.jetstream().stream_info(stream.name)
        assert info.state.messages == 2


async def _gauge_is(srv: ServerProcess, value: float) -> bool:
    return await srv.metric("evbridge_sink_up", {"sink": "n"}) == value


async def _not_ready(srv: ServerProcess) -> bool:
    return await ready_status(srv) == 503
