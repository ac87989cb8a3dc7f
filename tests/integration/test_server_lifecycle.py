"""Process lifecycle of ``evbridge serve``: socket files, readiness, SIGTERM drain, limits."""

from __future__ import annotations

import asyncio
import grp
import os
import signal
import socket
import stat
from pathlib import Path
from typing import Any

import pytest

from tests.brokers import wait_until
from tests.integration.conftest import ServerFactory
from tests.integration.server_process import (
    PROBE_SINK_FILES,
    SLOW_HANDLER,
    ServerProcess,
    assert_conforms,
    metric_value,
    start_server,
)

SLOW: dict[str, Any] = {"handlers": {"timeout_s": 60}}
DEADLINE = 10.0


def slow_event(server: ServerProcess, name: str = "x", **extra: Any) -> dict[str, Any]:
    """A ``slow.*`` event that stays in flight until ``release(server, name)``."""
    data = {
        "started": str(server.workdir / f"{name}.started"),
        "release": str(server.workdir / f"{name}.release"),
    }
    return {"type": f"slow.{name}", "data": {**data, **extra}}


def release(server: ServerProcess, name: str = "x") -> None:
    (server.workdir / f"{name}.release").touch()


async def wait_started(server: ServerProcess, name: str = "x") -> None:
    marker = server.workdir / f"{name}.started"
    await wait_until(marker.exists, timeout=DEADLINE, what=f"the slow handler {name!r} to start")


def exists(path: str) -> bool:
    return os.path.exists(path)


def refuses_connections(address: tuple[str, int]) -> bool:
    try:
        with socket.create_connection(address, timeout=1):
            return False
    except OSError:
        return True


async def readyz(server: ServerProcess) -> tuple[int, Any]:
    async with server.session("metrics") as http, http.get("/readyz") as response:
        body = await response.json()
        assert_conforms("GET", "/readyz", response.status, response.headers["Content-Type"], body)
        return response.status, body


# --- the Unix socket file ---------------------------------------------------------------


async def test_socket_mode_default(evbridge_server: ServerProcess) -> None:
    assert evbridge_server.unix_path is not None
    info = os.stat(evbridge_server.unix_path)
    assert stat.S_ISSOCK(info.st_mode)
    assert stat.S_IMODE(info.st_mode) == 0o660


def test_socket_mode_and_group(evbridge_server_factory: ServerFactory) -> None:
    group = grp.getgrgid(os.getgid()).gr_name
    server = evbridge_server_factory({"listen": {"unix_mode": "0600", "unix_group": group}})
    assert server.unix_path is not None
    info = os.stat(server.unix_path)
    assert stat.S_IMODE(info.st_mode) == 0o600
    assert info.st_gid == os.getgid()


def test_stale_socket_is_replaced_and_removed_on_exit(
    evbridge_server_factory: ServerFactory,
) -> None:
    first = evbridge_server_factory()
    path = first.unix_path
    assert path is not None
    first.send_signal(signal.SIGKILL)  # a crash: the socket file stays behind
    first.proc.wait(DEADLINE)  # type: ignore[union-attr]
    assert os.path.exists(path)
    second = evbridge_server_factory({"listen": {"unix": path}})
    assert second.unix_path == path
    status, _, _ = second.sync_client("unix").request("GET", "/healthz")
    assert status == 200
    assert second.stop() == 0
    assert not os.path.exists(path)


def test_live_socket_is_not_stolen(evbridge_server: ServerProcess) -> None:
    path = evbridge_server.unix_path
    with pytest.raises(AssertionError, match="exited with 1"):
        start_server({"listen": {"unix": path}})
    status, _, _ = evbridge_server.sync_client("unix").request("GET", "/healthz")
    assert status == 200  # the first server still owns its socket


def test_regular_file_is_not_replaced() -> None:
    path = Path("/tmp") / f"eb-file-{os.getpid()}.sock"
    path.write_text("not a socket")
    try:
        with pytest.raises(AssertionError, match="is not a socket"):
            start_server({"listen": {"unix": str(path)}})
        assert path.read_text() == "not a socket"
    finally:
        path.unlink()


def test_too_long_socket_path_is_a_config_error() -> None:
    with pytest.raises(AssertionError, match="exited with 2"):
        start_server({"listen": {"unix": "/tmp/" + "x" * 120}})


# --- readiness --------------------------------------------------------------------------


async def test_readiness_follows_sink_health(evbridge_server_factory: ServerFactory) -> None:
    marker = Path("/tmp") / f"eb-unhealthy-{os.getpid()}"
    server = evbridge_server_factory(
        {
            "sinks": [{"name": "probe", "type": "probe", "unhealthy_file": str(marker)}],
            "routes": [{"name": "all", "match": "*", "sink": "probe"}],
        },
        files=PROBE_SINK_FILES,
    )
    try:
        marker.touch()

        async def not_ready() -> bool:
            return (await readyz(server))[0] == 503

        await wait_until(not_ready, timeout=DEADLINE, what="/readyz to answer 503")
        _, body = await readyz(server)
        assert body["ready"] is False
        assert body["not_ready"] == ["sink probe: probe broker unreachable"]
        assert body["sinks"]["probe"] == {"ok": False, "detail": "probe broker unreachable"}
        assert await server.metric("evbridge_ready") == 0.0
        marker.unlink()

        async def ready() -> bool:
            return (await readyz(server))[0] == 200

        await wait_until(ready, timeout=DEADLINE, what="/readyz to answer 200 again")
        assert await server.metric("evbridge_ready") == 1.0
    finally:
        marker.unlink(missing_ok=True)


def test_sink_that_cannot_start_fails_startup(evbridge_server_factory: ServerFactory) -> None:
    with pytest.raises(AssertionError, match="exited with 1"):
        evbridge_server_factory(
            {
                "sinks": [{"name": "probe", "type": "probe", "fail_start": True}],
                "routes": [{"name": "all", "match": "*", "sink": "probe"}],
            },
            files=PROBE_SINK_FILES,
        )


# --- SIGTERM --------------------------------------------------------------------------------


async def test_sigterm_drains_a_request_in_flight(evbridge_server_factory: ServerFactory) -> None:
    server = evbridge_server_factory(
        {**SLOW, "shutdown": {"grace_s": 30}}, handlers={"slow_handler": SLOW_HANDLER}
    )
    assert server.tcp_address is not None
    assert server.unix_path is not None
    async with server.session("unix") as http:
        in_flight = asyncio.ensure_future(http.post("/v1/events", json=slow_event(server)))
        await wait_started(server)
        server.send_signal(signal.SIGTERM)

        async def not_ready() -> bool:
            return (await readyz(server))[0] == 503

        await wait_until(not_ready, timeout=DEADLINE, what="/readyz to answer 503 after SIGTERM")
        _, body = await readyz(server)
        assert body["phase"] == "draining"
        assert body["not_ready"] == ["shutting down: not accepting events"]
        assert await server.metric("evbridge_ready") == 0.0
        tcp = server.tcp_address
        await wait_until(
            lambda: refuses_connections(tcp), timeout=DEADLINE, what="TCP to stop accepting"
        )
        assert not in_flight.done()

        release(server)
        response = await asyncio.wait_for(in_flight, DEADLINE)
        assert response.status == 200
        assert (await response.json())["status"] == "published"
    assert await server.wait_exit(DEADLINE) == 0
    summary = await server.wait_for_log(lambda r: "drained" in r, what="the summary line")
    assert (summary["drained"], summary["cut_off"]) == (1, 0)
    assert summary["accepted"] == 1
    assert not exists(server.unix_path)


async def test_grace_period_bounds_the_drain(evbridge_server_factory: ServerFactory) -> None:
    server = evbridge_server_factory(
        {**SLOW, "shutdown": {"grace_s": 0.5}}, handlers={"slow_handler": SLOW_HANDLER}
    )
    async with server.session("unix") as http:
        in_flight = asyncio.ensure_future(http.post("/v1/events", json=slow_event(server)))
        await wait_started(server)
        server.send_signal(signal.SIGTERM)
        # Cut off at the grace limit, it is answered, not dropped: it may have been published.
        response = await asyncio.wait_for(in_flight, DEADLINE)
        assert response.status == 503
        assert response.headers["Retry-After"] == "1"
        assert (await response.json())["error"]["code"] == "outcome_unknown"
        assert await server.wait_exit(DEADLINE) == 0
    summary = await server.wait_for_log(lambda r: "drained" in r, what="the summary line")
    assert (summary["drained"], summary["cut_off"]) == (0, 1)
    assert summary["drain_s"] < 5


async def test_sigint_stops_cleanly(evbridge_server_factory: ServerFactory) -> None:
    server = evbridge_server_factory()
    status, _ = await server.emit({"type": "a.b"})
    assert status == 200
    server.send_signal(signal.SIGINT)
    assert await server.wait_exit(DEADLINE) == 0
    await server.wait_for_log(lambda r: r.get("signal") == "SIGINT", what="the SIGINT line")


# --- limits -----------------------------------------------------------------------------------


async def test_inflight_limit_answers_429(evbridge_server_factory: ServerFactory) -> None:
    server = evbridge_server_factory(
        {**SLOW, "limits": {"max_inflight": 2}}, handlers={"slow_handler": SLOW_HANDLER}
    )
    async with server.session("unix") as http, server.session("tcp") as tcp:
        first = asyncio.ensure_future(http.post("/v1/events", json=slow_event(server, "a")))
        second = asyncio.ensure_future(http.post("/v1/events", json=slow_event(server, "b")))
        await wait_started(server, "a")
        await wait_started(server, "b")
        assert await server.metric("evbridge_inflight_events") == 2.0
        for session, path, body in (
            (http, "/v1/events", {"type": "slow.c"}),
            (tcp, "/v1/events", {"type": "slow.c"}),
            (http, "/v1/events/batch", [{"type": "slow.c"}]),
        ):
            async with session.post(path, json=body) as response:
                assert response.status == 429
                assert response.headers["Retry-After"] == "1"
                answer = await response.json()
                assert_conforms("POST", path, 429, response.headers["Content-Type"], answer)
                assert answer["error"]["code"] == "overloaded"
        release(server, "a")
        release(server, "b")
        assert (await asyncio.wait_for(first, DEADLINE)).status == 200
        assert (await asyncio.wait_for(second, DEADLINE)).status == 200
        # Capacity is back: a batch of two fits, one of three would never fit (413).
        status, _ = await server.emit_batch([{"type": "a"}, {"type": "b"}])
        assert status == 200
        status, body = await server.emit_batch([{"type": "a"}] * 3)
        assert (status, body["error"]["code"]) == (413, "batch_too_large")
    text = await server.metrics_text()
    assert metric_value(text, "evbridge_events_rejected_total", {"reason": "overloaded"}) == 3.0
    assert metric_value(text, "evbridge_inflight_events") == 0.0


async def test_sigterm_during_a_slow_startup(evbridge_server_factory: ServerFactory) -> None:
    server = evbridge_server_factory(
        {
            "sinks": [{"name": "probe", "type": "probe", "start_wait_s": 60}],
            "routes": [{"name": "all", "match": "*", "sink": "probe"}],
        },
        files=PROBE_SINK_FILES,
        wait_started=False,
    )
    await server.wait_for_log(lambda r: r.get("listener") == "metrics", what="the metrics listener")
    server.read_addresses()
    status, body = await readyz(server)  # the metrics listener answers while sinks start
    assert (status, body["phase"]) == (503, "starting")
    server.send_signal(signal.SIGTERM)
    assert await server.wait_exit(DEADLINE) == 0
    await server.wait_for_log(
        lambda r: r.get("message") == "stopped during startup", what="the log line"
    )
