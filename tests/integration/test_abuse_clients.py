"""Slow and broken clients against the real server: slowloris on headers and bodies,
clients that vanish mid-body or before reading the answer, idle keep-alive connections
and ``limits.max_connections``, malformed and oversized requests.

Every test talks raw HTTP/1.1 over sockets (`RawConnection`), because the point is
what well-behaved client libraries never do.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.brokers import wait_until
from tests.integration.conftest import ServerFactory
from tests.integration.server_process import (
    SLOW_HANDLER,
    ServerProcess,
    assert_conforms,
    metric_value,
)

DEADLINE = 10.0


# --- raw HTTP clients (also used by test_abuse_overload.py) ---------------------------------


class RawConnection(asyncio.Protocol):
    """One HTTP/1.1 connection driven byte by byte.

    What the server sends is kept even when a later write of ours fails (a server
    that answered and closed while we were still sending), unlike asyncio streams.
    """

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.lost = False
        self.changed = asyncio.Event()

    @classmethod
    async def open(cls, server: ServerProcess, transport: str = "unix") -> RawConnection:
        loop = asyncio.get_running_loop()
        if transport == "unix":
            assert server.unix_path is not None
            _, connection = await loop.create_unix_connection(cls, server.unix_path)
        else:
            address = server.tcp_address if transport == "tcp" else server.metrics_address
            assert address is not None
            _, connection = await loop.create_connection(cls, *address)
        return connection

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self.changed.set()

    def eof_received(self) -> bool:
        self.lost = True
        self.changed.set()
        return False

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost = True
        self.changed.set()

    async def _wait_change(self) -> None:
        self.changed.clear()
        await self.changed.wait()

    async def send(self, data: bytes) -> None:
        if self.lost:
            raise ConnectionResetError("the server closed the connection")
        assert self.transport is not None
        self.transport.write(data)

    async def response(self, timeout: float = DEADLINE) -> tuple[int, dict[str, str], bytes]:
        """The next response: (status, headers with lowercase names, body)."""
        async with asyncio.timeout(timeout):
            while (end := self.buffer.find(b"\r\n\r\n")) < 0:
                if self.lost:
                    raise ConnectionResetError(f"closed without an answer: {bytes(self.buffer)!r}")
                await self._wait_change()
            lines = self.buffer[:end].decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ", 2)[1])
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            size = end + 4 + int(headers.get("content-length", "0"))
            while len(self.buffer) < size:
                if self.lost:
                    raise ConnectionResetError(f"closed mid-answer: {bytes(self.buffer)!r}")
                await self._wait_change()
            body = bytes(self.buffer[end + 4 : size])
            del self.buffer[:size]
        return status, headers, body

    async def closed_by_server(self, timeout: float = DEADLINE) -> bool:
        """True once the server closed the connection (EOF or reset), within ``timeout`` s."""
        try:
            async with asyncio.timeout(timeout):
                while not self.lost:
                    await self._wait_change()
        except TimeoutError:
            return False
        return True

    def half_close(self) -> None:
        assert self.transport is not None
        self.transport.write_eof()

    async def close(self) -> None:
        assert self.transport is not None
        self.transport.close()


def request(
    method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> bytes:
    """A complete HTTP/1.1 request (Content-Length set unless a header says otherwise)."""
    fields = {"Host": "evbridge", **(headers or {})}
    if body and "Transfer-Encoding" not in fields and "Content-Length" not in fields:
        fields["Content-Length"] = str(len(body))
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields.items())
    return head.encode() + b"\r\n" + body


def event_request(event: dict[str, Any]) -> bytes:
    body = json.dumps(event).encode()
    return request("POST", "/v1/events", body, {"Content-Type": "application/json"})


def error_of(body: bytes) -> dict[str, Any]:
    error: dict[str, Any] = json.loads(body)["error"]
    return error


def rss_bytes(pid: int) -> int:
    """The resident set size of process ``pid``, from ``/proc/<pid>/status``."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS in /proc/{pid}/status")


async def errors_metric(server: ServerProcess, stage: str, error_type: str) -> float:
    text = await server.metrics_text()
    return (
        metric_value(text, "evbridge_errors_total", {"stage": stage, "error_type": error_type})
        or 0.0
    )


def file_sink(server_dir_name: str = "out.jsonl") -> dict[str, Any]:
    """A config whose every event goes to a ``file`` sink (path relative to the server dir)."""
    return {
        "sinks": [{"name": "out", "type": "file", "path": server_dir_name}],
        "routes": [{"name": "all", "match": "*", "sink": "out"}],
    }


def published_ids(server: ServerProcess, name: str = "out.jsonl") -> set[str]:
    path = server.workdir / name
    if not path.exists():
        return set()
    return {json.loads(line)["id"] for line in path.read_text().splitlines() if line.strip()}


async def emit_ok(server: ServerProcess, transport: str = "unix") -> None:
    status, body = await asyncio.wait_for(
        server.emit({"type": "probe.ok"}, transport=transport),  # type: ignore[arg-type]
        DEADLINE,
    )
    assert status == 200, body


async def wait_for_inflight(server: ServerProcess, count: int) -> None:
    async def reached() -> bool:
        return await server.metric("evbridge_inflight_events") == count

    await wait_until(reached, timeout=DEADLINE, what=f"{count} events in flight")


@contextlib.contextmanager
def no_tracebacks(server: ServerProcess) -> Iterator[None]:
    """Assert that the server logs no unexpected error while the block runs."""
    before = len(server.logs())
    yield
    for record in server.logs()[before:]:
        assert record.get("level") != "error", record
        assert "Traceback" not in json.dumps(record), record


# --- slowloris --------------------------------------------------------------------------------


async def trickle(connection: RawConnection, data: bytes, interval: float = 0.05) -> None:
    """Send ``data`` one byte at a time until the server hangs up."""
    with contextlib.suppress(ConnectionError):
        for byte in data:
            await connection.send(bytes([byte]))
            await asyncio.sleep(interval)


async def test_header_slowloris_is_cut_off_and_stalls_nobody(
    evbridge_server_factory: ServerFactory,
) -> None:
    server = evbridge_server_factory({"limits": {"header_timeout_s": 1, "keepalive_timeout_s": 60}})
    slow = [await RawConnection.open(server, t) for t in ("unix", "tcp") * 10]
    endless = b"POST /v1/events HTTP/1.1\r\nHost: x\r\n" + b"X-Slow: y\r\n" * 10_000
    tricklers = [asyncio.ensure_future(trickle(c, endless)) for c in slow]
    try:
        # While every slow connection is open and trickling, others are answered.
        for _ in range(10):
            await emit_ok(server, "unix")
            await emit_ok(server, "tcp")
        for connection in slow:
            status, headers, body = await connection.response()
            assert (status, error_of(body)["code"]) == (408, "header_timeout")
            assert headers["content-type"] == "application/json"
            assert await connection.closed_by_server()
    finally:
        for task in tricklers:
            task.cancel()
        for connection in slow:
            await connection.close()
    assert await errors_metric(server, "ingest", "header_timeout") == len(slow)
    await emit_ok(server)


async def test_body_slowloris_is_cut_off_and_not_processed(
    evbridge_server_factory: ServerFactory,
) -> None:
    server = evbridge_server_factory({"limits": {"body_timeout_s": 1}, **file_sink()})
    slow = [await RawConnection.open(server, t) for t in ("unix", "tcp") * 5]
    ids = [str(uuid.uuid4()) for _ in slow]
    tricklers = []
    for connection, event_id in zip(slow, ids, strict=True):
        full = event_request({"type": "slow.body", "id": event_id})
        head, _, body = full.partition(b"\r\n\r\n")
        await connection.send(head + b"\r\n\r\n" + body[:5])
        tricklers.append(asyncio.ensure_future(trickle(connection, body[5:-1], 0.2)))
    try:
        for _ in range(10):
            await emit_ok(server, "unix")
            await emit_ok(server, "tcp")
        for connection in slow:
            status, _, body = await connection.response()
            error = error_of(body)
            assert (status, error["code"]) == (408, "body_timeout")
            assert "limits.body_timeout_s" in error["message"]
            assert await connection.closed_by_server()
    finally:
        for task in tricklers:
            task.cancel()
        for connection in slow:
            await connection.close()
    text = await server.metrics_text()
    assert metric_value(text, "evbridge_events_rejected_total", {"reason": "body_timeout"}) == 10
    assert metric_value(text, "evbridge_events_received_total", {"transport": "unix"}) == 10
    assert metric_value(text, "evbridge_events_received_total", {"transport": "tcp"}) == 10
    assert not published_ids(server) & set(ids)


# --- clients that vanish --------------------------------------------------------------------


@pytest.mark.parametrize("pause", [False, True], ids=["at-once", "after-a-pause"])
async def test_client_gone_mid_body_means_not_processed(
    evbridge_server_factory: ServerFactory, pause: bool
) -> None:
    server = evbridge_server_factory(file_sink())
    ids = [str(uuid.uuid4()) for _ in range(10)]
    with no_tracebacks(server):
        for event_id in ids:
            connection = await RawConnection.open(server)
            full = event_request({"type": "gone.mid", "id": event_id, "data": "x" * 200})
            await connection.send(full[: len(full) - 50])
            if pause:
                # The handler is admitted and waiting for the rest of the body.
                await wait_for_inflight(server, 1)
            await connection.close()
            if pause:
                await wait_for_inflight(server, 0)

        async def all_refused() -> bool:
            text = await server.metrics_text()
            counted = metric_value(
                text, "evbridge_events_rejected_total", {"reason": "incomplete_body"}
            )
            return counted == len(ids)

        await wait_until(all_refused, timeout=DEADLINE, what="10 incomplete_body rejections")
        await emit_ok(server)
    assert not published_ids(server) & set(ids)


@pytest.mark.parametrize("how", ["close", "half-close"])
async def test_client_gone_after_full_request_is_processed(
    evbridge_server_factory: ServerFactory, how: str
) -> None:
    server = evbridge_server_factory(file_sink())
    ids = [str(uuid.uuid4()) for _ in range(30)]
    with no_tracebacks(server):
        for i, event_id in enumerate(ids):
            connection = await RawConnection.open(server, "unix" if i % 2 else "tcp")
            await connection.send(event_request({"type": "gone.after", "id": event_id}))
            if how == "half-close":
                # Done sending, still reading: the answer must come.
                connection.half_close()
                status, _, body = await connection.response()
                assert status == 200, body
                assert json.loads(body)["id"] == event_id
            await connection.close()
        await wait_until(
            lambda: set(ids) <= published_ids(server),
            timeout=DEADLINE,
            what="every event whose request was complete to be published",
        )


async def test_client_gone_while_handlers_run_is_processed(
    evbridge_server_factory: ServerFactory,
) -> None:
    server = evbridge_server_factory(
        {"handlers": {"timeout_s": 60}, **file_sink()}, handlers={"slow_handler": SLOW_HANDLER}
    )
    event_id = str(uuid.uuid4())
    started, release = server.workdir / "x.started", server.workdir / "x.release"
    event = {
        "type": "slow.x",
        "id": event_id,
        "data": {"started": str(started), "release": str(release)},
    }
    connection = await RawConnection.open(server)
    await connection.send(event_request(event))
    await wait_until(started.exists, timeout=DEADLINE, what="the slow handler to start")
    await connection.close()
    release.touch()
    await wait_until(
        lambda: event_id in published_ids(server), timeout=DEADLINE, what="the event published"
    )
    text = await server.metrics_text()
    runs = metric_value(
        text, "evbridge_handler_runs_total", {"handler": "slow_handler.slow", "outcome": "ok"}
    )
    assert runs == 1.0


# --- connections ------------------------------------------------------------------------------


async def test_max_connections_refuses_then_recovers(
    evbridge_server_factory: ServerFactory,
) -> None:
    server = evbridge_server_factory(
        {"limits": {"max_connections": 4, "unix_reserved_connections": 0}}
    )
    idle = []
    for transport in ("unix", "tcp", "unix", "tcp"):
        connection = await RawConnection.open(server, transport)
        await connection.send(request("GET", "/healthz"))
        status, _, _ = await connection.response()
        assert status == 200  # then it stays open, idle, keep-alive
        idle.append(connection)
    for transport in ("tcp", "unix"):
        extra = await RawConnection.open(server, transport)
        with contextlib.suppress(ConnectionError):
            await extra.send(request("GET", "/healthz"))
        status, headers, body = await extra.response()
        assert status == 503
        assert headers["retry-after"] == "1"
        error = error_of(body)
        assert error["code"] == "too_many_connections"
        assert "limits.max_connections is 4" in error["message"]
        assert_conforms("POST", "/v1/events", status, headers["content-type"], body)
        assert await extra.closed_by_server()
        await extra.close()
    # The metrics listener has a budget of its own: probes still answer.
    assert await errors_metric(server, "accept", "too_many_connections") == 2.0
    # The idle connections still serve their clients.
    for connection in idle:
        await connection.send(request("GET", "/healthz"))
        assert (await connection.response())[0] == 200
    for connection in idle[:2]:
        await connection.close()

    async def accepted() -> bool:
        try:
            status, _ = await server.emit({"type": "after.close"})
        except Exception:
            return False
        return status == 200

    await wait_until(accepted, timeout=DEADLINE, what="a new connection to be accepted")
    for connection in idle[2:]:
        await connection.close()


async def test_idle_keepalive_connections_do_not_stall_active_clients(
    evbridge_server_factory: ServerFactory,
) -> None:
    server = evbridge_server_factory({"limits": {"max_connections": 300}})
    idle = []
    for i in range(250):
        connection = await RawConnection.open(server, "unix" if i % 2 else "tcp")
        if i % 5 == 0:  # some have served a request, the rest never sent a byte
            await connection.send(request("GET", "/healthz"))
            assert (await connection.response())[0] == 200
        idle.append(connection)
    try:
        async with server.session("unix") as unix, server.session("tcp") as tcp:
            for session in (unix, tcp) * 25:
                async with session.post("/v1/events", json={"type": "busy.x"}) as response:
                    assert response.status == 200
    finally:
        for connection in idle:
            await connection.close()


async def test_idle_keepalive_connection_is_closed_after_its_timeout(
    evbridge_server_factory: ServerFactory,
) -> None:
    server = evbridge_server_factory({"limits": {"keepalive_timeout_s": 1}})
    connection = await RawConnection.open(server, "tcp")
    await connection.send(request("GET", "/healthz"))
    assert (await connection.response())[0] == 200
    assert await connection.closed_by_server(DEADLINE)


# --- malformed and oversized requests ----------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "status", "code"),
    [
        (b"GET /" + b"x" * 10_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 431, "header_too_large"),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"y" * 10_000 + b"\r\n\r\n", 431,
         "header_too_large"),
        (b"GET / HTTP/1.1\r\n" + b"X-Many: z\r\n" * 200 + b"\r\n", 400, "bad_request"),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64, 400, "bad_request"),
        (b"POST /v1/events HTTP/1.1\r\nContent-Length: nope\r\n\r\n", 400, "bad_request"),
    ],
    ids=["request-line", "header-line", "too-many-headers", "tls-on-http", "bad-length"],
)  # fmt: skip
async def test_malformed_requests_get_json_errors(
    evbridge_server: ServerProcess, raw: bytes, status: int, code: str
) -> None:
    before = await errors_metric(evbridge_server, "ingest", code)
    with no_tracebacks(evbridge_server):
        for transport in ("unix", "tcp"):
            connection = await RawConnection.open(evbridge_server, transport)
            await connection.send(raw)
            got, headers, body = await connection.response()
            assert (got, error_of(body)["code"]) == (status, code), body
            assert headers["content-type"] == "application/json"
            assert await connection.closed_by_server()
            await connection.close()
    assert await errors_metric(evbridge_server, "ingest", code) == before + 2
    await emit_ok(evbridge_server)


def test_protocol_errors_on_a_plain_socket(evbridge_server: ServerProcess) -> None:
    """A client that half-closes right after a malformed request still reads the answer."""
    answer = evbridge_server.sync_client("unix").raw(b"BOGUS\r\n\r\n")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.")
    assert b" 400 " in head.split(b"\r\n")[0]
    assert error_of(body)["code"] == "bad_request"
