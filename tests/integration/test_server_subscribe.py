"""``GET /v1/subscribe`` (Server-Sent Events) against a real ``evbridge serve`` process."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest

from tests.brokers import wait_until
from tests.integration.server_process import ServerProcess, running_server

CONFIG: dict[str, Any] = {
    "auth": {"token": "sse-token"},
    "limits": {"max_subscribers": 2},
    "sinks": [{"name": "mem", "type": "memory"}],
    "routes": [{"match": "order.*", "sink": "mem"}],
}


class SseStream:
    """A minimal SSE client: parses ``event``/``id``/``data`` messages and comments."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response
        self.comments: list[str] = []

    async def message(self, timeout: float = 5.0) -> dict[str, Any]:
        fields: dict[str, Any] = {}
        async with asyncio.timeout(timeout):
            while True:
                raw = await self.response.content.readline()
                if not raw:
                    raise AssertionError("the stream ended")
                line = raw.decode().rstrip("\n")
                if not line:
                    if fields:
                        return fields
                    continue
                if line.startswith(":"):
                    self.comments.append(line[1:].strip())
                    continue
                name, _, value = line.partition(": ")
                fields[name] = json.loads(value) if name == "data" else value

    async def wait_comment(self, text: str, timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while text not in self.comments:
                raw = await self.response.content.readline()
                if not raw:
                    raise AssertionError("the stream ended")
                line = raw.decode().strip()
                if line.startswith(":"):
                    self.comments.append(line[1:].strip())


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    with running_server(CONFIG) as process:
        yield process


@pytest.fixture
async def open_stream(server: ServerProcess) -> AsyncIterator[Any]:
    sessions: list[aiohttp.ClientSession] = []
    responses: list[aiohttp.ClientResponse] = []

    async def opener(query: str, transport: str = "unix", **kwargs: Any) -> tuple[int, SseStream]:
        http = server.session(transport, **kwargs)  # type: ignore[arg-type]
        sessions.append(http)
        response = await http.get(
            f"/v1/subscribe?{query}", timeout=aiohttp.ClientTimeout(total=None)
        )
        responses.append(response)
        stream = SseStream(response)
        if response.status == 200:
            await stream.wait_comment("subscribed")
        return response.status, stream

    yield opener
    for response in responses:
        response.close()
    for http in sessions:
        await http.close()

    async def all_freed() -> bool:
        return not await server.metric("evbridge_subscribers")

    # Each test starts with no stream open (the server notices a gone client within 0.25 s).
    await wait_until(all_freed, timeout=5, what="streams freed")


@pytest.mark.parametrize("transport", ["unix", "tcp"])
async def test_stream_carries_matching_events_in_order_with_status(
    server: ServerProcess, open_stream: Any, transport: str
) -> None:
    status, stream = await open_stream("type=order.*&type=audit.*", transport)
    assert status == 200
    assert stream.response.headers["Content-Type"] == "text/event-stream"
    await server.emit({"type": "other.x", "kind": "domain"})
    await server.emit({"type": "order.a", "data": {"n": 1}})
    await server.emit_batch(
        [{"type": "order.b"}, {"type": "audit.z", "kind": "domain"}, {"type": "audit.x"}]
    )
    got = [await stream.message() for _ in range(4)]
    assert [(m["event"], m["data"]["status"]) for m in got] == [
        ("order.a", "published"),
        ("order.b", "published"),
        ("audit.z", "handled"),
        ("audit.x", "rejected"),
    ]
    assert got[0]["data"]["data"] == {"n": 1}
    assert got[0]["id"] == got[0]["data"]["id"]


async def test_heartbeat_comments_keep_an_idle_stream_alive(open_stream: Any) -> None:
    status, stream = await open_stream("type=nothing.*&heartbeat_s=0.1")
    assert status == 200
    await stream.wait_comment("heartbeat", timeout=3)


async def test_a_slow_reader_gets_a_dropped_message(
    server: ServerProcess, open_stream: Any
) -> None:
    status, stream = await open_stream("type=order.drop&max_queue=2")
    assert status == 200
    # One batch lands in the queue before the stream's writer gets the loop back.
    await server.emit_batch([{"type": "order.drop", "data": {"i": i}} for i in range(6)])
    first = await stream.message()
    assert first == {"event": "dropped", "data": {"dropped": 4}}
    rest = [await stream.message() for _ in range(2)]
    assert [m["data"]["data"]["i"] for m in rest] == [4, 5]


async def test_auth_limits_and_bad_queries(server: ServerProcess, open_stream: Any) -> None:
    status, _ = await open_stream("type=order.*", "tcp", token="wrong")
    assert status == 401
    status, bad = await open_stream("overflow=block")
    assert status == 400
    body = await bad.response.json()
    assert body["error"]["field"] == "overflow"
    status, _ = await open_stream("type=a")
    assert status == 200
    status, _ = await open_stream("type=b")
    assert status == 200
    status, third = await open_stream("type=c")
    assert status == 429
    assert (await third.response.json())["error"]["code"] == "too_many_subscribers"
    assert "Retry-After" in third.response.headers


async def test_disconnect_frees_the_subscription(server: ServerProcess) -> None:
    async def subscribers() -> float | None:
        return await server.metric("evbridge_subscribers")

    before = await subscribers()
    http = server.session("unix")
    response = await http.get("/v1/subscribe?type=x.*", timeout=aiohttp.ClientTimeout(total=None))
    await SseStream(response).wait_comment("subscribed")
    await wait_until(lambda: _gt(subscribers, before), timeout=5, what="subscriber counted")
    response.close()
    await http.close()
    await wait_until(lambda: _eq(subscribers, before), timeout=5, what="subscription freed")


async def _gt(get: Any, value: float | None) -> bool:
    return (await get() or 0) > (value or 0)


async def _eq(get: Any, value: float | None) -> bool:
    return (await get() or 0) == (value or 0)
