"""Memory is bounded in bytes, against the real server: subscribers that never read,
several of them together, request bodies in flight, and the deliverer's window while
the broker does not answer (docs/guarantees.md, "Memory").

RSS is read from ``/proc/<pid>/status``: ``VmHWM`` is the peak, so a bound that held only
at the end of a test would not pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp

from tests.brokers import wait_until
from tests.integration.conftest import ServerFactory
from tests.integration.durable_support import durable_config
from tests.integration.server_process import SLOW_HANDLER, ServerProcess, metric_value

MIB = 1024 * 1024
#: The soak benchmark's peak-RSS target (bench/soak.py, ``Targets.peak_rss_mb``): the
#: defaults must keep a server with a stalled subscriber under it.
SOAK_PEAK_RSS_MB = 150.0
EVENT_BYTES = 256 * 1024
DEADLINE = 30.0


def proc_status(pid: int, field: str) -> int:
    """``VmRSS`` / ``VmHWM`` of process ``pid`` in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} in /proc/{pid}/status")


@contextlib.contextmanager
def stalled_subscriber(server: ServerProcess, query: str) -> Iterator[socket.socket]:
    """An SSE stream whose client reads the head and ``: subscribed``, then nothing."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(DEADLINE)
        sock.connect(server.unix_path or "")
        sock.sendall(f"GET /v1/subscribe?{query} HTTP/1.1\r\nHost: evbridge\r\n\r\n".encode())
        seen = b""
        while b": subscribed\n\n" not in seen:
            chunk = sock.recv(4096)
            assert chunk, f"the stream ended before it was live: {seen!r}"
            seen += chunk
        assert seen.startswith(b"HTTP/1.1 200"), seen
        yield sock
    finally:
        sock.close()


async def post_big(
    server: ServerProcess,
    types: list[str],
    count: int,
    *,
    kind: str = "domain",
    status: int = 200,
) -> None:
    """POST ``count`` events of `EVENT_BYTES` of data per type, 4 at a time."""
    connector = aiohttp.UnixConnector(path=server.unix_path or "", limit=4)
    async with aiohttp.ClientSession("http://evbridge", connector=connector) as http:

        async def post(type_: str, i: int) -> None:
            body = json.dumps({"type": type_, "kind": kind, "data": f"{i:08d}" + "x" * EVENT_BYTES})
            async with http.post(
                "/v1/events", data=body, headers={"Content-Type": "application/json"}
            ) as response:
                assert response.status == status, await response.text()

        queue = [(t, i) for i in range(count) for t in types]
        for start in range(0, len(queue), 64):
            await asyncio.gather(*(post(t, i) for t, i in queue[start : start + 64]))


async def dropped(server: ServerProcess, bound: str) -> float:
    text = await server.metrics_text()
    return metric_value(text, "evbridge_subscription_dropped_total", {"bound": bound}) or 0.0


async def warm_up(server: ServerProcess) -> int:
    """Post a few big events with no subscriber (allocator arenas, caches); the RSS after."""
    await post_big(server, ["warm.x"], 16)
    return proc_status(server.pid, "VmRSS")


async def test_a_subscriber_that_never_reads_keeps_the_server_under_the_soak_rss_goal(
    evbridge_server_factory: ServerFactory,
) -> None:
    """The attack: ``max_queue=100000`` and big events, never read. The queue's byte
    bound (``limits.max_subscriber_bytes``, 16 MiB by default) holds, the oldest events
    are dropped and counted, and the server stays under the soak's peak RSS."""
    server = evbridge_server_factory({"sinks": [{"name": "mem", "type": "memory"}]})
    before = await warm_up(server)
    posted = 600  # 150 MiB of data: every one of them queued would break the goal
    with stalled_subscriber(server, "type=big.*&max_queue=100000"):
        await post_big(server, ["big.x"], posted)
        peak = proc_status(server.pid, "VmHWM")
        text = await server.metrics_text()
    growth = peak - before
    assert peak <= SOAK_PEAK_RSS_MB * MIB, f"peak RSS {peak / MIB:.0f} MiB"
    assert growth <= 48 * MIB, f"RSS grew by {growth / MIB:.0f} MiB (queue bound 16 MiB)"
    lost = metric_value(text, "evbridge_subscription_dropped_total", {"bound": "max_queue_bytes"})
    # At most 16 MiB / 256 KiB = 64 events queued, a few more in the socket's writes.
    assert lost is not None
    assert posted - 72 <= lost <= posted - 32, lost
    queued = metric_value(text, "evbridge_subscription_queued_bytes")
    assert queued is not None
    assert 0 < queued <= 16 * MIB


async def test_all_subscribers_together_are_bounded_and_the_one_keeping_up_loses_nothing(
    evbridge_server_factory: ServerFactory,
) -> None:
    """Eight stalled streams of different events, each within its own bound (16 MiB),
    hold twice ``limits.max_total_subscriber_bytes`` (64 MiB by default) between them:
    the shared bound holds, the streams furthest behind lose their oldest events, a
    ninth stream that reads keeps up, and the server stays under the soak's RSS goal."""
    server = evbridge_server_factory({"sinks": [{"name": "mem", "type": "memory"}]})
    before = await warm_up(server)
    types = [f"big{i}.x" for i in range(8)]
    per_type = 60  # 15 MiB per stream: under its own bound, 120 MiB together
    async with server.session("unix") as http:
        reader = await http.get(
            "/v1/subscribe?type=small.*", timeout=aiohttp.ClientTimeout(total=None)
        )
        assert await reader.content.readline() == b": subscribed\n"
        with contextlib.ExitStack() as streams:
            for type_ in types:
                streams.enter_context(stalled_subscriber(server, f"type={type_}"))
            for i in range(5):
                await post_big(server, types, per_type // 5)
                status, _ = await server.emit({"type": "small.x", "data": i})
                assert status == 200
            peak = proc_status(server.pid, "VmHWM")
            text = await server.metrics_text()
        got = []
        async with asyncio.timeout(DEADLINE):
            while len(got) < 5:
                line = await reader.content.readline()
                if line.startswith(b"event: "):
                    got.append(line)
        reader.close()
    assert got == [b"event: small.x\n"] * 5  # no `event: dropped` before any of them
    growth = peak - before
    assert peak <= SOAK_PEAK_RSS_MB * MIB, f"peak RSS {peak / MIB:.0f} MiB"
    assert growth <= 88 * MIB, f"RSS grew by {growth / MIB:.0f} MiB (shared bound 64 MiB)"
    lost = metric_value(
        text, "evbridge_subscription_dropped_total", {"bound": "max_total_subscriber_bytes"}
    )
    assert lost is not None
    # At most 64 MiB / 256 KiB = 256 events queued, and a few per stream in its writes.
    assert lost >= len(types) * per_type - 64 * MIB // EVENT_BYTES - 4 * len(types), lost
    per_stream = metric_value(
        text, "evbridge_subscription_dropped_total", {"bound": "max_queue_bytes"}
    )
    assert per_stream == 0.0
    queued = metric_value(text, "evbridge_subscription_queued_bytes")
    assert queued is not None
    assert queued <= 64 * MIB


def _slow(server: ServerProcess, name: str, pad: int) -> dict[str, Any]:
    return {
        "type": f"slow.{name}",
        "data": {
            "started": str(server.workdir / f"{name}.started"),
            "release": str(server.workdir / f"{name}.release"),
            "pad": "p" * pad,
        },
    }


async def test_request_bodies_in_flight_are_bounded_in_bytes(
    evbridge_server_factory: ServerFactory,
) -> None:
    """``limits.max_inflight_bytes``: a held 600 KB request leaves room for small ones
    only; a second big one, a big batch and a chunked body (which reserves
    ``max_body_bytes``) get 429 before their body is processed; release frees it all."""
    server = evbridge_server_factory(
        {
            "handlers": {"timeout_s": 60},
            "limits": {"max_body_bytes": 700_000, "max_inflight_bytes": 1_000_000},
        },
        handlers={"slow_handler": SLOW_HANDLER},
    )
    held_body = json.dumps(_slow(server, "hold", 600_000)).encode()
    async with server.session("unix") as http:
        held = asyncio.ensure_future(
            http.post("/v1/events", data=held_body, headers={"Content-Type": "application/json"})
        )
        await wait_until(
            (server.workdir / "hold.started").exists, timeout=DEADLINE, what="the held event"
        )
        assert await server.metric("evbridge_inflight_bytes") == len(held_body)

        async with http.post("/v1/events", json={"type": "big.x", "data": "b" * 600_000}) as r:
            assert r.status == 429, await r.text()
            assert r.headers["Retry-After"] == "1"
            error = (await r.json())["error"]
            assert error["code"] == "overloaded"
            assert "limits.max_inflight_bytes" in error["message"]
        batch = [{"type": "big.b", "data": "b" * 1000} for _ in range(600)]
        async with http.post("/v1/events/batch", json=batch) as r:
            assert r.status == 429, await r.text()

        async def chunks() -> Any:
            yield b'{"type": "small.chunked"}'

        async with http.post(
            "/v1/events", data=chunks(), headers={"Content-Type": "application/json"}
        ) as r:
            assert r.status == 429, await r.text()
        status, _ = await server.emit({"type": "small.x", "data": "s" * 1000})
        assert status == 200

        (server.workdir / "hold.release").touch()
        response = await asyncio.wait_for(held, DEADLINE)
        assert response.status == 200
        response.release()
        async with http.post("/v1/events", json={"type": "big.x", "data": "b" * 600_000}) as r:
            assert r.status == 200, await r.text()
    assert await server.metric("evbridge_inflight_bytes") == 0
    assert await server.metric("evbridge_inflight_events") == 0


async def test_a_stream_can_lower_its_byte_bound_and_disconnect_on_it(
    evbridge_server_factory: ServerFactory,
) -> None:
    """``?max_queue_bytes=`` lowers one stream's bound (values above the config's are
    capped, 0 is refused naming the field); with ``overflow=disconnect`` a stalled
    stream that passes it is ended: once read, it has what was queued, then
    ``event: overflow``; the disconnect is counted with its bound."""
    server = evbridge_server_factory({"sinks": [{"name": "mem", "type": "memory"}]})
    async with server.session("unix") as http, http.get("/v1/subscribe?max_queue_bytes=0") as r:
        assert r.status == 400
        assert (await r.json())["error"]["field"] == "max_queue_bytes"
    with stalled_subscriber(
        server, "type=big.*&overflow=disconnect&max_queue_bytes=600000"
    ) as sock:
        await post_big(server, ["big.x"], 10)
        text = await server.metrics_text()
        disconnected = metric_value(
            text, "evbridge_subscription_disconnected_total", {"bound": "max_queue_bytes"}
        )
        assert disconnected == 1.0
        sock.setblocking(True)
        sock.settimeout(DEADLINE)
        received = b""
        while chunk := await asyncio.to_thread(sock.recv, 1 << 20):
            received += chunk
            if b"event: overflow\n" in received:
                break
    messages = received.count(b"event: big.x\n")
    assert 2 <= messages <= 6, messages  # two queued, a few taken before the socket filled
    overflow = received[received.index(b"event: overflow\n") :]
    assert b'"code":"subscription_overflow"' in overflow
    assert b"600000 bytes behind" in overflow


# A sink that holds every publish while the file ``hold_file`` exists: a broker that
# accepts connections and never answers.
_GATE_SINK = """
import asyncio
import os

from bridge.results import Delivery
from bridge.sinks.base import Health, RouteOptions, SinkConfig, SinkType


class GateConfig(SinkConfig, frozen=True, kw_only=True):
    hold_file: str


class GateRoute(RouteOptions, frozen=True, kw_only=True):
    topic: str = "gate"

    def destination(self, sink):
        return self.topic


class GateSink:
    def __init__(self, config):
        self.name = config.name
        self.hold = config.hold_file

    async def start(self):
        pass

    async def publish_many(self, items):
        while os.path.exists(self.hold):
            await asyncio.sleep(0.02)
        return [Delivery(self.name, item.options.topic) for item in items]

    async def healthcheck(self):
        return Health(ok=True)

    async def stop(self):
        pass


SINK_TYPE = SinkType("gate", GateConfig, GateRoute, GateSink, coalesce=False)
"""
GATE_SINK_FILES = {
    "gate_sink.py": _GATE_SINK,
    "evbridge_gate_sink-0.0.dist-info/METADATA": (
        "Metadata-Version: 2.1\nName: evbridge-gate-sink\nVersion: 0.0\n"
    ),
    "evbridge_gate_sink-0.0.dist-info/entry_points.txt": "[evbridge.sinks]\ngate = gate_sink\n",
}


async def test_a_stalled_broker_keeps_the_deliverer_window_bounded_in_bytes(
    evbridge_server_factory: ServerFactory, tmp_path: Path
) -> None:
    """Durable delivery with a broker that never answers: 150 MiB of accepted events wait
    on disk, and the deliverer holds only ``delivery.window_bytes`` (16 MiB, charged
    3 times the record size) of them in memory, not its 4 000 records' worth; once the
    broker answers, every one is delivered."""
    hold = tmp_path / "hold"
    server = evbridge_server_factory(
        durable_config(
            tmp_path / "spool",
            [{"name": "gate", "type": "gate", "hold_file": str(hold)}],
            [{"name": "all", "match": "*", "sink": "gate", "topic": "t"}],
        ),
        files=GATE_SINK_FILES,
    )
    await post_big(server, ["warm.x"], 16, kind="notification", status=202)

    async def delivered() -> float:
        text = await server.metrics_text()
        found = metric_value(text, "evbridge_published_total", {"sink": "gate", "outcome": "ok"})
        return found or 0.0

    await wait_until(lambda: _equals(delivered, 16), timeout=DEADLINE, what="the warm-up")
    before = proc_status(server.pid, "VmRSS")
    hold.touch()
    posted = 600
    await post_big(server, ["big.x"], posted, kind="notification", status=202)
    peak = proc_status(server.pid, "VmHWM")
    growth = peak - before
    # Before the byte bound, the window held all 600 (RSS +300 MiB).
    assert growth <= 48 * MIB, f"RSS grew by {growth / MIB:.0f} MiB (window bound 16 MiB)"
    hold.unlink()
    await wait_until(
        lambda: _equals(delivered, 16 + posted), timeout=DEADLINE, what="every event delivered"
    )


async def _equals(read: Any, value: float) -> bool:
    return bool(await read() == value)
