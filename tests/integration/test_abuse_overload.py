"""Overload against the real server: the in-flight limit (429), bounded memory under a
burst of rejected load, instant recovery, and the body and batch limits enforced before
unbounded data is read."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp

from tests.brokers import wait_until
from tests.integration.conftest import ServerFactory
from tests.integration.server_process import SLOW_HANDLER, ServerProcess, metric_value
from tests.integration.test_abuse_clients import (
    DEADLINE,
    RawConnection,
    error_of,
    request,
    rss_bytes,
    wait_for_inflight,
)

#: Rejected requests in the memory test, and how much the server's RSS may grow across them.
BURST = 5_000
RSS_GROWTH_LIMIT = 30 * 1024 * 1024
CONCURRENCY = 32


def slow_event(server: ServerProcess, name: str) -> dict[str, Any]:
    return {
        "type": f"slow.{name}",
        "data": {
            "started": str(server.workdir / f"{name}.started"),
            "release": str(server.workdir / f"{name}.release"),
        },
    }


async def reject_many(server: ServerProcess, count: int, payload: dict[str, Any]) -> list[int]:
    """POST ``count`` events over `CONCURRENCY` keep-alive connections; their statuses."""
    statuses: list[int] = []
    body = json.dumps(payload).encode()
    connector = aiohttp.UnixConnector(path=server.unix_path or "", limit=CONCURRENCY)
    async with aiohttp.ClientSession("http://evbridge", connector=connector) as http:

        async def worker(n: int) -> None:
            for _ in range(n):
                async with http.post(
                    "/v1/events", data=body, headers={"Content-Type": "application/json"}
                ) as response:
                    answer = await response.read()
                    statuses.append(response.status)
                    if response.status == 429:
                        assert response.headers["Retry-After"] == "1"
                        assert error_of(answer)["code"] == "overloaded"

        share, rest = divmod(count, CONCURRENCY)
        await asyncio.gather(*(worker(share + (i < rest)) for i in range(CONCURRENCY)))
    return statuses


async def test_overload_is_refused_with_bounded_memory_and_recovers_at_once(
    evbridge_server_factory: ServerFactory,
) -> None:
    server = evbridge_server_factory(
        {"handlers": {"timeout_s": 60}, "limits": {"max_inflight": 1}},
        handlers={"slow_handler": SLOW_HANDLER},
    )
    async with server.session("unix") as http:
        held = asyncio.ensure_future(http.post("/v1/events", json=slow_event(server, "hold")))
        await wait_until(
            (server.workdir / "hold.started").exists, timeout=DEADLINE, what="the held event"
        )
        await wait_for_inflight(server, 1)
        payload = {"type": "burst.x", "data": "p" * 1024}
        # Warm up (allocator arenas, aiohttp caches), then measure across the burst.
        assert set(await reject_many(server, 500, payload)) == {429}
        before = rss_bytes(server.pid)
        statuses = await reject_many(server, BURST, payload)
        after = rss_bytes(server.pid)
        assert statuses == [429] * BURST
        growth = after - before
        assert growth < RSS_GROWTH_LIMIT, f"RSS grew by {growth / 2**20:.1f} MiB"
        # Load drops: the very next request is admitted, no retry needed.
        (server.workdir / "hold.release").touch()
        response = await asyncio.wait_for(held, DEADLINE)
        assert response.status == 200
        response.release()
        status, body = await server.emit({"type": "after.burst"})
        assert status == 200, body
    text = await server.metrics_text()
    rejected = metric_value(text, "evbridge_events_rejected_total", {"reason": "overloaded"})
    assert rejected == BURST + 500
    assert metric_value(text, "evbridge_inflight_events") == 0.0


async def test_content_length_over_the_limit_is_refused_unread(
    evbridge_server_factory: ServerFactory,
) -> None:
    server = evbridge_server_factory({"limits": {"max_body_bytes": 1000}})
    for transport in ("unix", "tcp"):
        connection = await RawConnection.open(server, transport)
        # Only the headers: the answer must come without a byte of the 1 GB body.
        await connection.send(request("POST", "/v1/events", headers={"Content-Length": str(10**9)}))
        status, headers, body = await connection.response()
        error = error_of(body)
        assert (status, error["code"]) == (413, "body_too_large")
        assert "limits.max_body_bytes is 1000" in error["message"]
        assert headers["content-type"] == "application/json"
        await connection.close()
    # Exactly at the limit is fine.
    event = json.dumps({"type": "edge.x", "data": ""}).encode()
    padded = event[:-2] + b" " * (1000 - len(event)) + event[-2:]
    assert len(padded) == 1000
    connection = await RawConnection.open(server)
    await connection.send(request("POST", "/v1/events", padded))
    status, _, body = await connection.response()
    assert status == 200, body
    await connection.close()


async def test_chunked_body_is_cut_off_at_the_limit(
    evbridge_server_factory: ServerFactory,
) -> None:
    server = evbridge_server_factory({"limits": {"max_body_bytes": 1000}})
    connection = await RawConnection.open(server)
    await connection.send(request("POST", "/v1/events", headers={"Transfer-Encoding": "chunked"}))
    # 1 500 bytes of body and no final chunk: the body never ends, the answer still comes.
    for _ in range(3):
        await connection.send(b"1f4\r\n" + b"x" * 500 + b"\r\n")
    status, _, body = await connection.response()
    error = error_of(body)
    assert (status, error["code"]) == (413, "body_too_large")
    assert "1000" in error["message"]
    await connection.close()
    text = await server.metrics_text()
    assert metric_value(text, "evbridge_events_received_total", {"transport": "unix"}) == 0.0


async def test_batch_over_the_limit_is_refused(evbridge_server_factory: ServerFactory) -> None:
    server = evbridge_server_factory({"limits": {"max_batch": 5}})
    events = [{"type": "batch.x"}] * 6
    ndjson = "".join(json.dumps(e) + "\n" for e in events).encode()
    async with server.session("unix") as http:
        for data, content_type in (
            (json.dumps(events).encode(), "application/json"),
            (ndjson, "application/x-ndjson"),
        ):
            async with http.post(
                "/v1/events/batch", data=data, headers={"Content-Type": content_type}
            ) as response:
                error = error_of(await response.read())
                assert (response.status, error["code"]) == (413, "batch_too_large")
                assert "the limit is 5" in error["message"]
    status, body = await server.emit_batch(events[:5])
    assert status == 200, body
    text = await server.metrics_text()
    # Nothing of a refused batch was processed.
    assert metric_value(text, "evbridge_events_received_total", {"transport": "unix"}) == 5.0
