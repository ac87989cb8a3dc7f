"""Handlers that never return, swallow their cancellation or raise BaseExceptions, run by the
real server process (``evbridge serve``).

Whatever a handler does, its request is answered, the other handlers of the event run,
the bridge's own I/O goes on, and SIGTERM still ends the process in bounded time.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.brokers import wait_until
from tests.integration.conftest import ServerFactory
from tests.integration.server_process import ServerProcess

#: Plain ``def`` handlers that block their thread for good (until the process exits).
STUCK_HANDLERS = """
import asyncio
import threading

from bridge import on


@on("stuck.*", timeout=0.5)
def stuck(event, ctx):
    threading.Event().wait()


@on("long.*", timeout=60)
def long(event, ctx):
    threading.Event().wait()


@on("quick.*", timeout=2)
def quick(event, ctx):
    pass


@on("async.*")
async def fine(event, ctx):
    await asyncio.sleep(0)
"""

#: The loop's default executor on this machine (what plain ``def`` handlers used to share
#: with the bridge's own blocking I/O): ``min(32, cpu_count + 4)``.
DEFAULT_EXECUTOR = min(32, (os.cpu_count() or 1) + 4)


async def emit_within(
    srv: ServerProcess, event: dict[str, Any], timeout: float = 10.0
) -> tuple[int, Any]:
    """POST one event; fail (instead of hanging) when no answer comes within ``timeout``."""
    try:
        return await asyncio.wait_for(srv.emit(event), timeout)
    except TimeoutError:
        raise AssertionError(
            f"no answer to {event['type']} within {timeout:g}s:\n{srv.log_tail()}"
        ) from None


async def stick(srv: ServerProcess, n: int) -> None:
    """Leave ``n`` handler threads stuck forever; each request is answered with a timeout."""
    answers = await asyncio.gather(
        *(emit_within(srv, {"type": "stuck.x", "kind": "domain", "data": i}) for i in range(n))
    )
    for status, body in answers:
        assert status == 200, body
        [run] = body["handlers"]
        assert run["outcome"] == "timeout", run
        assert "its thread cannot be stopped" in run["error"], run


def file_events(srv: ServerProcess) -> list[str]:
    path = srv.workdir / "out" / "events.jsonl"
    return path.read_text().splitlines() if path.exists() else []


def io_config(spool: Path) -> dict[str, Any]:
    return {
        "sinks": [
            {"name": "out", "type": "file", "path": "out/events.jsonl"},
            {"name": "mem", "type": "memory"},
        ],
        "routes": [
            {"name": "spooled", "match": "durable.*", "sink": "mem", "delivery": "durable"},
            {"name": "all", "match": "*", "sink": "out"},
        ],
        "delivery": {"spool_dir": str(spool), "retry": {"initial_s": 0.05, "max_s": 0.5}},
    }


async def test_stuck_sync_handlers_leave_the_bridge_io_and_other_handlers_alone(
    evbridge_server_factory: ServerFactory, tmp_path: Path
) -> None:
    # As many stuck handlers as the default executor has threads: the bridge's file writes
    # and spool reads run there, so they must not be the handlers' threads.
    config = io_config(tmp_path / "spool")
    if DEFAULT_EXECUTOR >= 32:  # handlers.threads defaults to 32: leave room for one more
        config["handlers"] = {"threads": DEFAULT_EXECUTOR + 4}
    srv = evbridge_server_factory(config, handlers={"stuck_handlers": STUCK_HANDLERS})
    await stick(srv, DEFAULT_EXECUTOR)

    # A plain def handler still gets a thread, and the file sink (blocking writes) publishes.
    status, body = await emit_within(srv, {"type": "quick.x", "data": "after"})
    assert status == 200, body
    assert body["status"] == "published", body
    assert [(h["name"], h["outcome"]) for h in body["handlers"]] == [("stuck_handlers.quick", "ok")]
    assert len(file_events(srv)) == 1
    status, body = await emit_within(srv, {"type": "async.x"})
    assert status == 200, body
    assert body["handlers"][0]["outcome"] == "ok"

    # Durable delivery (spool writes and reads) goes on.
    status, body = await emit_within(srv, {"type": "durable.x", "data": 1})
    assert status == 202, body

    async def delivered() -> bool:
        value = await srv.metric("evbridge_published_total", {"sink": "mem", "outcome": "ok"})
        return value == 1

    await wait_until(delivered, timeout=10, what="the spooled event to reach the memory sink")

    stuck = await srv.metric("evbridge_handler_threads_stuck", {"handler": "stuck_handlers.stuck"})
    assert stuck == DEFAULT_EXECUTOR
    assert await srv.metric("evbridge_handler_threads_busy") == DEFAULT_EXECUTOR


async def test_a_full_handler_pool_times_out_sync_handlers_and_nothing_else(
    evbridge_server_factory: ServerFactory, tmp_path: Path
) -> None:
    config = io_config(tmp_path / "spool")
    config["handlers"] = {"threads": 2}
    srv = evbridge_server_factory(config, handlers={"stuck_handlers": STUCK_HANDLERS})
    await stick(srv, 2)
    assert await srv.metric("evbridge_handler_threads_max") == 2
    assert await srv.metric("evbridge_handler_threads_busy") == 2
    assert (
        await srv.metric("evbridge_handler_threads_stuck", {"handler": "stuck_handlers.stuck"}) == 2
    )

    # Waiting for a thread counts against the handler's own timeout (2 s): then it is a
    # timeout, the event is still published, and the request is answered.
    started = time.monotonic()
    status, body = await emit_within(srv, {"type": "quick.x"})
    elapsed = time.monotonic() - started
    assert status == 200, body
    assert body["status"] == "published", body
    [run] = body["handlers"]
    assert run["outcome"] == "timeout", run
    assert run["error"] == "timed out after 2s waiting for a free handler thread (all 2 busy)"
    assert 1.9 < elapsed < 6, elapsed
    # The run that timed out while queued never starts later (it would take a thread).
    assert await srv.metric("evbridge_handler_threads_busy") == 2

    # async handlers, the file sink and durable delivery do not wait for handler threads.
    status, body = await emit_within(srv, {"type": "async.x"}, timeout=3)
    assert status == 200, body
    assert body["handlers"][0]["outcome"] == "ok"
    assert len(file_events(srv)) == 2
    status, body = await emit_within(srv, {"type": "durable.x"}, timeout=3)
    assert status == 202, body


@pytest.mark.parametrize("in_flight", [False, True], ids=["answered", "in-flight"])
async def test_shutdown_exits_in_time_with_handler_threads_stuck_forever(
    evbridge_server_factory: ServerFactory, in_flight: bool
) -> None:
    grace = 2.0
    srv = evbridge_server_factory(
        {"shutdown": {"grace_s": grace}}, handlers={"stuck_handlers": STUCK_HANDLERS}
    )
    await stick(srv, 2)
    expected = {"stuck_handlers.stuck": 2}
    request: asyncio.Future[tuple[int, Any]] | None = None
    if in_flight:
        # Its handler (timeout 60 s) blocks past the grace: the drain cuts the request off.
        request = asyncio.ensure_future(srv.emit({"type": "long.x", "kind": "domain"}))

        async def running() -> bool:
            return await srv.metric("evbridge_handler_threads_busy") == 3

        await wait_until(running, timeout=10, what="the long handler to take a thread")
        expected["stuck_handlers.long"] = 1
    started = time.monotonic()
    srv.send_signal(signal.SIGTERM)
    code = await srv.wait_exit(timeout=grace + 10)
    elapsed = time.monotonic() - started
    assert code == 0, srv.log_tail()
    # Answered runs: nothing to wait for. In flight: the drain's grace, then the cut-off.
    assert elapsed < (grace + 1.5 if in_flight else grace), elapsed
    if request is not None:
        with contextlib.suppress(aiohttp.ClientError):
            await request
    lines = [r for r in srv.logs() if "handler threads still busy" in r.get("message", "")]
    assert len(lines) == 1, lines
    [line] = lines
    assert line["level"] == "warning"
    assert line["stuck_threads"] == sum(expected.values())
    assert line["handlers"] == sorted(expected)
    for name, n in expected.items():
        assert f"{name} ({n})" in line["message"]


#: Handlers that raise what ``except Exception`` does not catch, before and after awaiting,
#: and in a thread; ``after`` runs after each of them.
BASE_EXCEPTION_HANDLERS = """
import asyncio

from bridge import on


class Fatal(BaseException):
    pass


@on("exit.now", priority=1)
async def exits(event, ctx):
    raise SystemExit(3)


@on("exit.later", priority=1)
async def exits_later(event, ctx):
    await asyncio.sleep(0.01)
    raise SystemExit(3)


@on("exit.thread", priority=1)
def exits_in_a_thread(event, ctx):
    raise SystemExit(3)


@on("interrupt.later", priority=1)
async def interrupts(event, ctx):
    await asyncio.sleep(0)
    raise KeyboardInterrupt


@on("interrupt.thread", priority=1)
def interrupts_in_a_thread(event, ctx):
    raise KeyboardInterrupt


@on("fatal.now", priority=1)
async def fatal(event, ctx):
    raise Fatal("the handler gave up")


@on("fatal.later", priority=1)
async def fatal_later(event, ctx):
    await asyncio.sleep(0.01)
    raise Fatal("the handler gave up")


@on("*")
async def after(event, ctx):
    pass
"""

BASE_EXCEPTION_CASES = [
    ("exit.now", "exits", "SystemExit: 3"),
    ("exit.later", "exits_later", "SystemExit: 3"),
    ("exit.thread", "exits_in_a_thread", "SystemExit: 3"),
    ("interrupt.later", "interrupts", "KeyboardInterrupt"),
    ("interrupt.thread", "interrupts_in_a_thread", "KeyboardInterrupt"),
    ("fatal.now", "fatal", "Fatal: the handler gave up"),
    ("fatal.later", "fatal_later", "Fatal: the handler gave up"),
]


@pytest.fixture
def base_server(evbridge_server_factory: ServerFactory) -> ServerProcess:
    # One server per test: on failure, one case's crash must not hide the next one's.
    return evbridge_server_factory(handlers={"raising": BASE_EXCEPTION_HANDLERS})


@pytest.mark.parametrize(("type_", "handler", "error"), BASE_EXCEPTION_CASES)
async def test_a_base_exception_in_a_handler_is_its_error_and_the_event_goes_on(
    base_server: ServerProcess, type_: str, handler: str, error: str
) -> None:
    status, body = await emit_within(base_server, {"type": type_, "data": 1})
    assert status == 200, body
    assert body["status"] == "published", body
    assert [(h["name"], h["outcome"], h["error"]) for h in body["handlers"]] == [
        (f"raising.{handler}", "error", error),
        ("raising.after", "ok", None),
    ]
    assert base_server.returncode is None, base_server.log_tail()
    kind = error.partition(":")[0]
    counted = await base_server.metric(
        "evbridge_errors_total", {"stage": "handler", "error_type": kind}
    )
    assert counted is not None
    assert counted >= 1
    lines = [r for r in base_server.logs() if body["id"] in r.get("message", "")]
    assert len(lines) == 1, lines
    assert lines[0]["level"] == "error"
    assert f"raised {kind}" in lines[0]["message"]


async def test_base_exceptions_in_a_batch_fail_only_their_handler(
    base_server: ServerProcess,
) -> None:
    events = [{"type": type_, "data": i} for i, (type_, _, _) in enumerate(BASE_EXCEPTION_CASES)]
    status, body = await asyncio.wait_for(base_server.emit_batch(events), 10)
    assert status == 200, body
    assert body["accepted"] == len(events)
    for result, (_, handler, error) in zip(body["results"], BASE_EXCEPTION_CASES, strict=True):
        assert result["status"] == "published", result
        assert [(h["name"], h["outcome"], h["error"]) for h in result["handlers"]] == [
            (f"raising.{handler}", "error", error),
            ("raising.after", "ok", None),
        ]
    assert base_server.returncode is None


#: ``stubborn`` catches every cancellation and goes on awaiting; ``polite`` cleans up
#: (awaiting) when cancelled, then ends; ``lingering`` (timeout above the shutdown grace)
#: is cut off by the shutdown and ignores that too.
STUBBORN_HANDLERS = """
import asyncio

from bridge import on


async def ignore_cancellation():
    while True:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            pass


@on("stubborn.*", timeout=0.3, priority=1)
async def stubborn(event, ctx):
    await ignore_cancellation()


@on("polite.*", timeout=0.3, priority=1)
async def polite(event, ctx):
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        await asyncio.sleep(0.05)
        raise


@on("lingering.*", timeout=60, priority=1)
async def lingering(event, ctx):
    await ignore_cancellation()


@on("*")
async def after(event, ctx):
    pass
"""


async def test_a_handler_that_ignores_its_cancellation_is_abandoned_and_the_request_answered(
    evbridge_server_factory: ServerFactory,
) -> None:
    grace = 2.0
    srv = evbridge_server_factory(
        # handlers.cancel_grace_s stays at its default, 1 s.
        {"limits": {"max_inflight": 1}, "shutdown": {"grace_s": grace}},
        handlers={"stubborn_handlers": STUBBORN_HANDLERS},
    )
    # Twice, one at a time: with max_inflight 1 the second is admitted only if the first
    # request's in-flight slot was given back.
    ids = []
    for i in range(2):
        started = time.monotonic()
        status, body = await emit_within(srv, {"type": "stubborn.x", "data": i})
        elapsed = time.monotonic() - started
        assert status == 200, body
        assert body["status"] == "published", body
        assert [(h["name"], h["outcome"], h["error"]) for h in body["handlers"]] == [
            (
                "stubborn_handlers.stubborn",
                "timeout",
                "timed out after 0.3s and ignored its cancellation: abandoned",
            ),
            ("stubborn_handlers.after", "ok", None),
        ]
        assert 1.2 < elapsed < 5, elapsed  # timeout + cancel grace
        ids.append(body["id"])
    assert await srv.metric("evbridge_handler_tasks_abandoned") == 2
    assert (
        await srv.metric("evbridge_errors_total", {"stage": "handler", "error_type": "abandoned"})
        == 2
    )
    assert await srv.metric("evbridge_inflight_events") == 0
    for event_id in ids:  # logged once each, as abandoned (not also as a plain timeout)
        lines = [r for r in srv.logs() if event_id in r.get("message", "")]
        assert len(lines) == 1, lines
        assert "did not end within 1s of its cancellation: abandoned" in lines[0]["message"]

    # A handler that awaits some cleanup when cancelled, and ends, is a plain timeout.
    status, body = await emit_within(srv, {"type": "polite.x"})
    assert status == 200, body
    assert body["handlers"][0]["outcome"] == "timeout"
    assert body["handlers"][0]["error"] == "timed out after 0.3s"
    assert await srv.metric("evbridge_handler_tasks_abandoned") == 2

    # At exit the abandoned tasks are cancelled once more, then named and left behind.
    started = time.monotonic()
    srv.send_signal(signal.SIGTERM)
    assert await srv.wait_exit(timeout=15) == 0, srv.log_tail()
    assert time.monotonic() - started < grace + 4  # + run_to_exit's 2 s for leftover tasks
    stuck = await srv.wait_for_log(lambda r: "did not stop within" in r.get("message", ""))
    assert stuck["stuck_tasks"] == 2
    assert "abandoned handler stubborn_handlers.stubborn" in stuck["message"]


async def test_a_request_cut_off_at_shutdown_is_cancelled_even_if_its_handler_ignores_it(
    evbridge_server_factory: ServerFactory,
) -> None:
    grace = 1.0
    srv = evbridge_server_factory(
        {"shutdown": {"grace_s": grace}},
        handlers={"stubborn_handlers": STUBBORN_HANDLERS},
    )
    request = asyncio.ensure_future(srv.emit({"type": "lingering.x"}))

    async def in_flight() -> bool:
        return await srv.metric("evbridge_inflight_events") == 1

    await wait_until(in_flight, timeout=10, what="the request to be in flight")
    started = time.monotonic()
    srv.send_signal(signal.SIGTERM)
    assert await srv.wait_exit(timeout=15) == 0, srv.log_tail()
    # grace + cancel grace (1 s), then at most run_to_exit's 2 s for the abandoned task.
    assert time.monotonic() - started < grace + 1 + 3
    with contextlib.suppress(aiohttp.ClientError):
        await request
    summary = await srv.wait_for_log(lambda r: "evbridge stopped" in r.get("message", ""))
    assert summary["cut_off"] == 1, summary
    caught = "caught the cancellation of its caller"
    left = [r for r in srv.logs() if caught in r.get("message", "")]
    assert len(left) == 1, left
    assert "stubborn_handlers.lingering" in left[0]["message"]
