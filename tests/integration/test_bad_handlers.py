"""Misbehaving handler modules loaded by the real server process (``evbridge serve``).

A handler that blocks the loop, leaks tasks, fails to import, is very slow, or emits
follow-ups in a cycle must not take the sidecar down: each is detected, recorded
and answered, and the process still starts or stops as promised.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.conftest import ServerFactory
from tests.integration.server_process import ServerProcess, running_server, start_server

BAD_HANDLERS = """
import asyncio
import time

from bridge import Event, on


@on("block.*")
async def blocker(event, ctx):
    time.sleep(event.data["sleep_s"])  # blocks the event loop: the bug under test


@on("slow.*", timeout=0.3)
async def sleepy(event, ctx):
    await asyncio.sleep(30)


@on("slow.*", priority=-1)
async def after_sleepy(event, ctx):
    pass


@on("ping")
async def ping_again(event, ctx):
    await ctx.emit(Event(type="ping", kind="domain"))
"""

MAX_DEPTH = 3


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    config = {"handlers": {"max_depth": MAX_DEPTH, "loop_warn_s": 0.25}}
    with running_server(config, handlers={"bad_handlers": BAD_HANDLERS}) as srv:
        yield srv


async def test_a_blocking_handler_shows_as_loop_lag_and_is_named(server: ServerProcess) -> None:
    status, body = await server.emit(
        {"type": "block.now", "kind": "domain", "data": {"sleep_s": 0.8}}
    )
    assert status == 200, body
    assert body["handlers"][0]["outcome"] == "ok"
    lag = await server.metric("evbridge_event_loop_lag_seconds")
    assert lag is not None
    assert lag >= 0.5, lag
    warning = await server.wait_for_log(
        lambda r: r.get("level") == "warning" and "event loop has been blocked" in r["message"],
        what="the loop-blocked warning",
    )
    assert "bad_handlers.blocker" in warning["message"]
    blocked = await server.metric(
        "evbridge_errors_total", {"stage": "handler", "error_type": "loop_blocked"}
    )
    assert blocked is not None
    assert blocked >= 1
    # The bridge still answers promptly afterwards.
    status, _ = await server.emit({"type": "other", "kind": "domain"})
    assert status == 200


async def test_a_very_slow_handler_times_out_and_the_next_one_runs(server: ServerProcess) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    status, body = await server.emit({"type": "slow.one", "kind": "domain"})
    elapsed = loop.time() - started
    assert status == 200, body
    outcomes = [(h["name"], h["outcome"]) for h in body["handlers"]]
    assert outcomes == [
        ("bad_handlers.sleepy", "timeout"),
        ("bad_handlers.after_sleepy", "ok"),
    ]
    assert "timed out after 0.3s" in body["handlers"][0]["error"]
    assert elapsed < 10, elapsed  # answered long before the handler's 30 s sleep would end
    timeouts = await server.metric(
        "evbridge_handler_runs_total", {"handler": "bad_handlers.sleepy", "outcome": "timeout"}
    )
    assert timeouts == 1


async def test_follow_ups_in_a_cycle_stop_at_the_depth_limit(server: ServerProcess) -> None:
    status, body = await server.emit({"type": "ping", "kind": "domain"})
    assert status == 200, body
    depth, node = 0, body
    while node["follow_ups"]:
        [node] = node["follow_ups"]
        depth += 1
    assert depth == MAX_DEPTH
    [last] = node["handlers"]
    assert last["outcome"] == "error"
    assert "MaxDepthExceeded" in last["error"]
    assert "max_depth is 3" in last["error"]
    errors = await server.metric(
        "evbridge_errors_total", {"stage": "handler", "error_type": "MaxDepthExceeded"}
    )
    assert errors is not None
    assert errors >= 1


LEAKY_HANDLERS = """
import asyncio

from bridge import on


async def forever():
    while True:
        await asyncio.sleep(3600)


async def stubborn():
    # Swallows every cancellation: only the end of the process stops it.
    while True:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            pass


@on("leak.*")
async def leak(event, ctx):
    for _ in range(20):
        asyncio.get_running_loop().create_task(forever())
    asyncio.get_running_loop().create_task(stubborn())
"""


async def test_leaked_tasks_do_not_stop_serving_or_shutdown(
    evbridge_server_factory: ServerFactory,
) -> None:
    grace = 2.0
    srv = evbridge_server_factory(
        {"shutdown": {"grace_s": grace}}, handlers={"leaky_handlers": LEAKY_HANDLERS}
    )
    for i in range(10):
        status, body = await srv.emit({"type": "leak.x", "kind": "domain", "data": i})
        assert status == 200, body
    status, body = await srv.emit_batch([{"type": "ok.y", "kind": "domain"}] * 5)
    assert status == 200
    assert body["accepted"] == 5
    started = time.monotonic()
    srv.send_signal(signal.SIGTERM)
    code = await srv.wait_exit(timeout=grace + 8)
    assert code == 0, srv.log_tail()
    assert time.monotonic() - started < grace + 5
    summary = await srv.wait_for_log(lambda r: "evbridge stopped" in r.get("message", ""))
    assert summary["accepted"] == 15
    # The 200 cancelled-and-ended tasks go quietly; the stubborn ones are named once.
    stuck = await srv.wait_for_log(lambda r: "did not stop within" in r.get("message", ""))
    assert stuck["stuck_tasks"] == 10
    assert "stubborn" in stuck["message"]
    assert not [r for r in srv.logs() if "destroyed but it is pending" in str(r)]


@pytest.mark.parametrize(
    ("source", "problem"),
    [
        ("raise RuntimeError('the database is not configured')", "RuntimeError"),
        ("import no_such_module_for_evbridge", "ModuleNotFoundError"),
        ("def broken(:\n", "SyntaxError"),
    ],
)
def test_a_handler_module_that_fails_to_import_stops_startup_clearly(
    source: str, problem: str
) -> None:
    srv = start_server(handlers={"exploding_handlers": source}, wait_started=False)
    try:
        assert srv.proc is not None
        started = time.monotonic()
        assert srv.proc.wait(30) == 2
        assert time.monotonic() - started < 15
        lines = srv.log_path.read_text().splitlines()
        records: list[dict[str, Any]] = srv.logs()
        assert len(lines) == 1, lines  # one line, no traceback
        [record] = records
        assert record["level"] == "error"
        assert "exploding_handlers" in record["message"]
        assert problem in record["message"]
        assert record["field"] == "handlers.modules[0]"
    finally:
        srv.stop()
