"""HTTP edges found by attack and by outside clients, against the real server: idle
connections, deep nesting, corrupt Content-Encoding, ``Expect``, unknown methods,
SSE for generic consumers, generated clients, and shutdown with a blackholed broker.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import signal
import subprocess
import sys
import time
import zlib
from collections.abc import AsyncIterator
from pathlib import Path

import aio_pika
import msgspec
import pytest
from yarl import URL

from tests.brokers import LOCALHOST, RabbitMQ, TcpProxy, unique_name, wait_until
from tests.integration.conftest import ServerFactory
from tests.integration.server_process import ServerProcess
from tests.integration.test_abuse_clients import (
    RawConnection,
    error_of,
    file_sink,
    published_ids,
    request,
)
from tests.integration.test_rabbitmq_server import Bound, bind, unbind

DEADLINE = 10.0
DEEP = 1000


def deep_json(levels: int = DEEP) -> bytes:
    return b"[" * levels + b"]" * levels


# --- item 6: idle connections --------------------------------------------------------


async def test_silent_connections_are_closed_and_the_unix_socket_keeps_its_reserve(
    evbridge_server_factory: ServerFactory,
) -> None:
    server = evbridge_server_factory(
        {
            "limits": {
                "max_connections": 40,
                "unix_reserved_connections": 10,
                "first_request_timeout_s": 1,
            }
        }
    )
    silent = [await RawConnection.open(server, "tcp") for _ in range(40)]
    try:
        # TCP gets 30 slots; the other 10 are kept for the Unix socket.
        await wait_until(
            lambda: sum(c.buffer.startswith(b"HTTP/1.1 503") for c in silent) >= 10,
            timeout=DEADLINE,
            what="10 TCP connections refused for the Unix reserve",
        )
        _, _, answer = bytes(silent[-1].buffer).partition(b"\r\n\r\n")
        assert "limits.unix_reserved_connections" in error_of(answer)["message"]
        status, body = await server.emit({"type": "local.app"})
        assert status == 200, body
        # Connections that never send are closed after first_request_timeout_s, with a 408.
        started = time.monotonic()
        for connection in silent:
            assert await connection.closed_by_server(DEADLINE)
        assert time.monotonic() - started < 5
        timed_out = [c for c in silent if c.buffer.startswith(b"HTTP/1.1 408")]
        assert len(timed_out) == 30
        _, _, answer = bytes(timed_out[0].buffer).partition(b"\r\n\r\n")
        assert "first_request_timeout_s" in error_of(answer)["message"]
        status, body = await server.emit({"type": "tcp.again"}, transport="tcp")
        assert status == 200, body
    finally:
        for connection in silent:
            await connection.close()


def test_reserve_must_be_below_max_connections(tmp_path: Path) -> None:
    from bridge.config import parse_config
    from bridge.errors import ConfigError

    with pytest.raises(ConfigError, match=r"limits.unix_reserved_connections.*got 8"):
        parse_config({"limits": {"max_connections": 8, "unix_reserved_connections": 8}})


# --- item 7: nesting depth -------------------------------------------------------------


@pytest.mark.parametrize("mode", ["json", "structured", "binary", "msgpack"])
async def test_deep_nesting_is_a_400_naming_the_field(
    evbridge_server: ServerProcess, mode: str
) -> None:
    headers = {"Content-Type": "application/json"}
    if mode == "json":
        body = b'{"type":"deep.x","data":' + deep_json() + b"}"
    elif mode == "structured":
        headers = {"Content-Type": "application/cloudevents+json"}
        body = b'{"specversion":"1.0","id":"1","source":"s","type":"deep.x","data":'
        body += deep_json() + b"}"
    elif mode == "binary":
        headers.update({"ce-specversion": "1.0", "ce-id": "1", "ce-source": "s", "ce-type": "t"})
        body = deep_json()
    else:
        headers = {"Content-Type": "application/msgpack"}
        body = b"\x82\xa4type\xa6deep.x\xa4data" + b"\x91" * DEEP + b"\x90"
    async with (
        evbridge_server.session() as http,
        http.post("/v1/events", data=body, headers=headers) as r,
    ):
        assert r.status == 400
        error = (await r.json())["error"]
    assert (error["code"], error["field"]) == ("too_deep", "data")
    assert "limits.max_nesting_depth (64)" in error["message"]


async def test_depth_64_is_accepted_65_refused(evbridge_server: ServerProcess) -> None:
    for levels, status in ((64, 200), (65, 400)):
        body = b'{"type":"deep.x","data":' + deep_json(levels) + b"}"
        async with (
            evbridge_server.session() as http,
            http.post("/v1/events", data=body, headers={"Content-Type": "application/json"}) as r,
        ):
            assert r.status == status, await r.text()


@pytest.mark.parametrize("media", ["application/json", "application/x-ndjson", "msgpack"])
async def test_a_deep_item_fails_alone_in_its_batch(
    evbridge_server: ServerProcess, media: str
) -> None:
    good = {"type": "batch.ok"}
    deep = b'{"type":"deep.x","data":' + deep_json() + b"}"
    if media == "application/json":
        body = b"[" + json.dumps(good).encode() + b"," + deep + b"]"
    elif media == "application/x-ndjson":
        body = json.dumps(good).encode() + b"\n" + deep + b"\n"
    else:
        media = "application/msgpack"
        deep_mp = b"\x82\xa4type\xa6deep.x\xa4data" + b"\x91" * DEEP + b"\x90"
        body = b"\x92" + msgspec.msgpack.encode(good) + deep_mp
    async with (
        evbridge_server.session() as http,
        http.post("/v1/events/batch", data=body, headers={"Content-Type": media}) as r,
    ):
        assert r.status == 200, await r.text()
        result = await r.json()
    assert (result["accepted"], result["rejected"]) == (1, 1)
    assert result["results"][1]["error"]["code"] == "too_deep"
    assert result["results"][1]["error"]["field"] == "data"


# --- item 15: Content-Encoding -------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/events", "/v1/events/batch"])
@pytest.mark.parametrize("coding", ["gzip", "deflate"])
async def test_corrupt_content_encoding_is_a_400(
    evbridge_server: ServerProcess, path: str, coding: str
) -> None:
    body = b'{"type":"plain.x"}' if path == "/v1/events" else b'[{"type":"plain.x"}]'
    headers = {"Content-Type": "application/json", "Content-Encoding": coding}
    async with evbridge_server.session() as http, http.post(path, data=body, headers=headers) as r:
        assert r.status == 400
        error = (await r.json())["error"]
    assert (error["code"], error["field"]) == ("invalid_content_encoding", "Content-Encoding")
    assert not [rec for rec in evbridge_server.logs() if "Traceback" in json.dumps(rec)]
    # And a real gzip/deflate body works.
    packed = zlib.compress(body) if coding == "deflate" else __import__("gzip").compress(body)
    async with (
        evbridge_server.session() as http,
        http.post(path, data=packed, headers=headers) as r,
    ):
        assert r.status == 200, await r.text()


@pytest.mark.parametrize("path", ["/v1/events", "/v1/events/batch"])
async def test_unknown_content_encoding_is_a_415(evbridge_server: ServerProcess, path: str) -> None:
    headers = {"Content-Type": "application/json", "Content-Encoding": "compress"}
    async with (
        evbridge_server.session() as http,
        http.post(path, data=b'{"type":"x"}', headers=headers) as r,
    ):
        assert r.status == 415
        assert "gzip" in r.headers["Accept-Encoding"]
        error = (await r.json())["error"]
    assert (error["code"], error["field"]) == ("unsupported_content_encoding", "Content-Encoding")


# --- item 16: Expect and methods --------------------------------------------------------------


async def test_expect_continue_gets_the_final_status_when_the_headers_decide_it(
    evbridge_server_factory: ServerFactory,
) -> None:
    server = evbridge_server_factory(
        {"limits": {"max_body_bytes": 1000}, "auth": {"token": "s3cret-token-0123456789"}}
    )
    head = {"Content-Type": "application/json", "Expect": "100-continue"}
    cases = [
        ("tcp", {**head, "Content-Length": "5000"}, 401),
        ("unix", {**head, "Content-Length": "5000"}, 413),
        ("unix", {**head, "Content-Encoding": "compress", "Content-Length": "10"}, 415),
    ]
    for transport, headers, status in cases:
        connection = await RawConnection.open(server, transport)
        await connection.send(request("POST", "/v1/events", headers=headers))
        got, _, body = await connection.response()
        assert got == status, body  # not 100 Continue first
        assert error_of(body)["code"]
        await connection.close()
    # Accepted headers: 100 Continue, then the body, then 200.
    connection = await RawConnection.open(server, "unix")
    event = b'{"type":"continue.ok"}'
    await connection.send(
        request("POST", "/v1/events", headers={**head, "Content-Length": str(len(event))})
    )
    got, _, _ = await connection.response()
    assert got == 100
    await connection.send(event)
    got, _, body = await connection.response()
    assert got == 200, body
    await connection.close()


async def test_unknown_expectation_is_a_json_417(evbridge_server: ServerProcess) -> None:
    connection = await RawConnection.open(evbridge_server, "unix")
    await connection.send(request("POST", "/v1/events", b"{}", {"Expect": "teapot"}))
    status, headers, body = await connection.response()
    assert status == 417
    assert headers["content-type"] == "application/json"
    assert (error_of(body)["code"], error_of(body)["field"]) == ("expectation_failed", "Expect")
    await connection.close()


async def test_unknown_method_is_a_json_501_and_known_ones_stay_405(
    evbridge_server: ServerProcess,
) -> None:
    async with evbridge_server.session() as http:
        async with http.request("BREW", "/v1/events") as r:
            assert r.status == 501
            assert (await r.json())["error"]["code"] == "not_implemented"
        async with http.request("PUT", "/v1/events") as r:
            assert r.status == 405
            assert (await r.json())["error"]["code"] == "method_not_allowed"


# --- item 18: SSE ----------------------------------------------------------------------


@pytest.mark.parametrize("named", [True, False])
async def test_subscribe_named_false_sends_plain_messages(
    evbridge_server: ServerProcess, named: bool
) -> None:
    kind = unique_name("sse").replace("-", ".")
    query = "" if named else "&named=false"
    async with (
        evbridge_server.session() as http,
        http.get(f"/v1/subscribe?type={kind}{query}") as stream,
    ):
        assert stream.status == 200
        assert (await stream.content.readuntil(b"\n\n")) == b": subscribed\n\n"
        status, _ = await evbridge_server.emit({"type": kind, "data": 1})
        assert status == 200
        message = await asyncio.wait_for(stream.content.readuntil(b"\n\n"), DEADLINE)
    lines = message.decode().strip().split("\n")
    assert (f"event: {kind}" in lines) is named
    data = json.loads(next(line for line in lines if line.startswith("data: "))[6:])
    assert data["type"] == kind


async def test_subscribe_named_must_be_a_boolean(evbridge_server: ServerProcess) -> None:
    async with evbridge_server.session() as http, http.get("/v1/subscribe?named=maybe") as r:
        assert r.status == 400
        assert (await r.json())["error"]["field"] == "named"


# --- item 17: a generated client -----------------------------------------------------------


def test_openapi_python_client_publishes_an_event_and_a_batch(
    evbridge_server_factory: ServerFactory, tmp_path: Path
) -> None:
    generator = Path(sys.executable).with_name("openapi-python-client")
    document = Path(__file__).resolve().parents[2] / "bridge" / "openapi.json"
    subprocess.run(
        [str(generator), "generate", "--path", str(document), "--meta", "none",
         "--output-path", str(tmp_path / "evbridge_client")],
        check=True, cwd=tmp_path, capture_output=True, timeout=120,
    )  # fmt: skip
    server = evbridge_server_factory(file_sink())
    sys.path.insert(0, str(tmp_path))
    try:
        client_mod = importlib.import_module("evbridge_client.client")
        post_event = importlib.import_module("evbridge_client.api.default.post_event")
        post_batch = importlib.import_module("evbridge_client.api.default.post_batch")
        models = importlib.import_module("evbridge_client.models")
        with client_mod.Client(base_url=server.base_url("tcp")) as client:
            one = post_event.sync_detailed(client=client, body=models.Event(type_="gen.one"))
            assert one.status_code == 200, one.content
            batch = post_batch.sync_detailed(
                client=client,
                body=[models.Event(type_="gen.two"), models.Event(type_="gen.three")],
            )
        assert batch.status_code == 200, batch.content
        assert batch.parsed.accepted == 2
        ids = {one.parsed.id, *(item.id for item in batch.parsed.results)}
    finally:
        sys.path.remove(str(tmp_path))
        for name in [m for m in sys.modules if m.startswith("evbridge_client")]:
            del sys.modules[name]
    assert ids <= published_ids(server)


# --- item 10: shutdown with a blackholed broker ---------------------------------------------


@pytest.fixture
async def bound(rabbitmq: RabbitMQ) -> AsyncIterator[Bound]:
    """An exchange with a queue bound to it, on the machine's broker (not through the proxy)."""
    async with await aio_pika.connect(rabbitmq.url) as connection:
        channel = await connection.channel()
        exchange = await bind(channel)
        yield exchange
        await unbind(channel, exchange)


async def test_shutdown_with_a_blackholed_broker_is_bounded_and_answers_everyone(
    rabbitmq: RabbitMQ, bound: Bound, evbridge_server_factory: ServerFactory
) -> None:
    grace = 2.0
    async with TcpProxy(LOCALHOST, URL(rabbitmq.url).port or 5672) as proxy:
        url = f"amqp://guest:guest@{LOCALHOST}:{proxy.port}/"
        exchange = bound.name
        server = evbridge_server_factory(
            {
                "sinks": [{"name": "rmq", "type": "rabbitmq", "url": url, "exchange": exchange,
                           "confirm_timeout_s": 60}],
                "routes": [{"match": "*", "sink": "rmq"}],
                "shutdown": {"grace_s": grace},
            },
            wait_ready=False,  # the proxy runs on this loop: do not block it
        )  # fmt: skip
        await wait_until(lambda: _ready(server), timeout=DEADLINE, what="/readyz to turn 200")
        status, body = await server.emit({"type": "before.blackhole"})
        assert status == 200, body
        await proxy.blackhole()
        async with server.session() as http:
            pending = [
                asyncio.ensure_future(http.post("/v1/events", json={"type": f"stuck.{i}"}))
                for i in range(3)
            ]
            await wait_until(
                lambda: _inflight(server, 3), timeout=DEADLINE, what="3 requests in flight"
            )
            started = time.monotonic()
            server.send_signal(signal.SIGTERM)
            responses = await asyncio.gather(*pending)
            for response in responses:
                assert response.status == 503
                assert response.headers["Retry-After"]
                assert (await response.json())["error"]["code"] == "outcome_unknown"
            assert await server.wait_exit(DEADLINE * 2) == 0
        took = time.monotonic() - started
    from bridge.server.run import SHUTDOWN_BOUND_S

    assert took <= grace + SHUTDOWN_BOUND_S, took


async def _ready(server: ServerProcess) -> bool:
    async with server.session("metrics") as http, http.get("/readyz") as r:
        return r.status == 200


async def _inflight(server: ServerProcess, count: int) -> bool:
    return await server.metric("evbridge_inflight_events") == count
