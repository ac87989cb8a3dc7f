"""``evbridge serve``: open the listeners, run until SIGTERM/SIGINT, shut down in order.

Start: the metrics listener first (``/healthz`` answers while sinks start),
then the bus (every sink), then the API listeners; one log line per listener.

Shutdown, on the first SIGTERM or SIGINT:

1. readiness goes 503 (``/readyz`` keeps answering on the metrics listener);
2. the API listeners stop accepting and idle keep-alive connections close;
3. requests in flight finish, bounded by ``shutdown.grace_s``; those still
   running then are cut off and answered ``503 outcome_unknown`` (their events
   may or may not be published) within `CUT_OFF_ANSWER_S`;
4. the bus stops: coalesced publishes finish, sinks flush and stop, within what
   is left of the grace period (at least `STOP_FLOOR_S`);
5. the metrics listener closes, the Unix socket file is removed, and one
   summary line is logged.

Every stage is bounded, so the process exits within ``grace_s`` plus
`SHUTDOWN_BOUND_S`, even with a broker that accepts connections and never
answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
from collections.abc import Coroutine
from contextlib import AsyncExitStack
from time import monotonic
from typing import Any, TypeVar

from aiohttp import web

import bridge
from bridge import tracing
from bridge.config import Config
from bridge.errors import ConfigError
from bridge.server._aiohttp import GuardedSite
from bridge.server.app import Listener, create_app
from bridge.server.auth import check_exposure
from bridge.server.connections import CONNECTION_GUARD
from bridge.server.listeners import (
    BACKLOG,
    absolute,
    bind_tcp,
    bind_unix,
    format_tcp,
    parse_tcp,
    remove_unix,
)
from bridge.server.state import Sidecar

log = logging.getLogger("bridge.server")
T = TypeVar("T")

#: The collector's first-generation threshold once the sidecar serves (see `serve`).
GC_THRESHOLD = 20_000


def _install_signals(
    loop: asyncio.AbstractEventLoop, stop: asyncio.Event, sidecar: Sidecar, main: asyncio.Task[None]
) -> None:
    def on_signal(signum: int) -> None:
        name = signal.Signals(signum).name
        if stop.is_set():
            log.info("%s received again: already shutting down", name, extra={"signal": name})
            return
        log.info("%s received: shutting down", name, extra={"signal": name})
        stop.set()
        if sidecar.phase == "starting":
            main.cancel()  # a sink may take long to connect: do not wait for it

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)


def _remove_signals(loop: asyncio.AbstractEventLoop) -> None:
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.remove_signal_handler(signum)


_CUT_OFF_S = 0.1
#: Seconds requests cut off at the grace limit get to write their 503.
CUT_OFF_ANSWER_S = 0.5
#: Seconds the bus gets to stop even when the grace period is used up.
STOP_FLOOR_S = 1.0
#: Seconds past ``shutdown.grace_s`` a SIGTERM may take to exit, at most: cutting off and
#: answering, closing listeners, the bus's floor, and leftover tasks (`run_to_exit`).
SHUTDOWN_BOUND_S = CUT_OFF_ANSWER_S + 2 * _CUT_OFF_S + STOP_FLOOR_S + 1.0


async def _drain(sidecar: Sidecar, runners: list[web.AppRunner], grace: float) -> bool:
    """Stop accepting, close idle connections, wait up to ``grace`` s for requests in flight.

    True if every event request finished in time.
    """
    for runner in runners:
        for site in list(runner.sites):
            await site.stop()
        if runner.server is not None:
            runner.server.pre_shutdown()
    return await sidecar.wait_idle(grace)


async def _start_site(sidecar: Sidecar, listener: Listener, sock: socket.socket) -> web.AppRunner:
    runner = web.AppRunner(
        create_app(sidecar, listener),
        access_log=None,
        handle_signals=False,
        # `_drain` already waited out the grace period: what is left gets cancelled.
        shutdown_timeout=_CUT_OFF_S,
    )
    await runner.setup()
    # Connections are made by the app's guard (limits.max_connections and the deadlines).
    protocols = runner.app[CONNECTION_GUARD].protocol_factory
    try:
        await GuardedSite(runner, sock, protocols, backlog=BACKLOG).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner


def _listening(sidecar: Sidecar, listener: str, address: str) -> None:
    sidecar.listeners[listener] = address
    log.info(
        "listening on %s %s", listener, address, extra={"listener": listener, "address": address}
    )


async def serve(config: Config, *, stop: asyncio.Event | None = None) -> None:
    """Run the sidecar until a signal (or ``stop`` is set). Startup failures raise.

    A signal during startup (sinks still connecting) cancels it: `asyncio.CancelledError`.
    """
    listen = config.listen
    tcp = parse_tcp(listen.tcp, "listen.tcp") if listen.tcp else None
    metrics = parse_tcp(config.metrics.tcp, "metrics.tcp") if config.metrics.tcp else None
    if tcp is None and listen.unix is None:
        raise ConfigError("listen: both tcp and unix are null; enable at least one", field="listen")
    check_exposure(config, tcp[0] if tcp else None)
    grace = config.shutdown.grace_s
    loop = asyncio.get_running_loop()
    stop = stop or asyncio.Event()
    sidecar = Sidecar(config)
    main = asyncio.current_task()
    assert main is not None
    api_runners: list[web.AppRunner] = []

    async def close_api() -> None:
        runners = api_runners[:]
        api_runners.clear()
        await asyncio.gather(*(runner.cleanup() for runner in runners))

    drain_s = 0.0
    draining = 0
    #: When shutdown started (monotonic); the bus gets what is left of the grace period.
    shutdown_at: list[float] = []

    async def stop_bus() -> None:
        left = grace - (monotonic() - shutdown_at[0]) if shutdown_at else grace
        await sidecar.stop(max(STOP_FLOOR_S, left))

    async with AsyncExitStack() as stack:
        _install_signals(loop, stop, sidecar, main)
        stack.callback(_remove_signals, loop)
        if tracing.setup(config.tracing, install_global=True):
            stack.callback(tracing.shutdown)
        if metrics is not None:
            sock = bind_tcp(*metrics, where="metrics.tcp")
            address = format_tcp(sock.getsockname())
            try:
                metrics_runner = await _start_site(sidecar, "metrics", sock)
            except BaseException:
                sock.close()
                raise
            stack.push_async_callback(metrics_runner.cleanup)
            _listening(sidecar, "metrics", address)
        await sidecar.start()
        stack.push_async_callback(stop_bus)
        if listen.unix is not None:
            unix_path = listen.unix
            sock, inode = bind_unix(unix_path, int(listen.unix_mode, 8), listen.unix_group)
            stack.callback(remove_unix, unix_path, inode)
            stack.push_async_callback(close_api)
            try:
                api_runners.append(await _start_site(sidecar, "unix", sock))
            except BaseException:
                sock.close()
                raise
            _listening(sidecar, "unix", absolute(unix_path))
        if tcp is not None:
            sock = bind_tcp(*tcp, where="listen.tcp")
            address = format_tcp(sock.getsockname())
            if not api_runners:
                stack.push_async_callback(close_api)
            try:
                api_runners.append(await _start_site(sidecar, "tcp", sock))
            except BaseException:
                sock.close()
                raise
            _listening(sidecar, "tcp", address)
        bus = sidecar.bus
        log.info(
            "evbridge %s started: %d sinks, %d routes, %d handlers",
            bridge.__version__,
            len(bus.sinks),
            len(config.routes),
            len(bus.handlers()),
            extra={"version": bridge.__version__, "pid": os.getpid()},
        )
        # Everything allocated so far lives until exit: keep it out of the collector's
        # full passes, which would otherwise show up as latency spikes.
        gc.collect()
        gc.freeze()
        # Every event allocates a few dozen short-lived objects, so the default
        # first-generation threshold (700) runs the collector every few events;
        # bench/bench_bus.py measured emit_many 1.8x faster at 20 000 (bench/README.md).
        gc.set_threshold(GC_THRESHOLD, *gc.get_threshold()[1:])
        await stop.wait()

        # Ordered shutdown; the exit stack then stops the bus and the metrics listener.
        sidecar.begin_shutdown()
        sidecar.sources.begin_stop()  # consuming stops beside the drain; the bus after both
        draining = sidecar.active_requests
        log.info(
            "draining: %d requests in flight, grace %.1fs",
            draining,
            grace,
            extra={"in_flight": draining, "grace_s": grace},
        )
        started = monotonic()
        shutdown_at.append(started)
        if not await _drain(sidecar, api_runners, grace):
            log.warning(
                "%d requests still in flight after the %.1fs grace period: answering them "
                "503 outcome_unknown",
                sidecar.active_requests,
                grace,
                extra={"in_flight": sidecar.active_requests},
            )
            sidecar.cut_off()
            await sidecar.wait_idle(CUT_OFF_ANSWER_S)
        await close_api()
        # Let whatever aiohttp cancelled while closing unwind (and be counted).
        await sidecar.wait_idle(_CUT_OFF_S)
        drain_s = monotonic() - started
    stats = sidecar.stats
    log.info(
        "evbridge stopped after %.1fs: %d requests, %d events accepted, %d rejected; "
        "drained %d in-flight requests in %.2fs, %d cut off at the grace limit",
        monotonic() - sidecar.started_at,
        stats.requests,
        stats.accepted,
        stats.rejected,
        draining - stats.cancelled,
        drain_s,
        stats.cancelled,
        extra={
            "requests": stats.requests,
            "accepted": stats.accepted,
            "rejected": stats.rejected,
            "drained": draining - stats.cancelled,
            "cut_off": stats.cancelled,
            "drain_s": round(drain_s, 3),
        },
    )


def loop_factory() -> asyncio.AbstractEventLoop:
    """A uvloop event loop when uvloop is installed, else asyncio's default."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


#: Seconds tasks still running after `serve` returned get to finish once cancelled.
LEFTOVER_GRACE_S = 1.0


def run_to_exit(coro: Coroutine[Any, Any, T], *, leftover_grace_s: float = LEFTOVER_GRACE_S) -> T:
    """Run ``coro`` on a fresh `loop_factory` loop, then close the loop in bounded time.

    Like `asyncio.run`, except for tasks still alive afterwards (say, tasks a
    handler started and never awaited): they are cancelled and get
    ``leftover_grace_s`` to end. One that ignores its cancellation is logged
    once and abandoned, so the process still exits instead of waiting forever.
    """
    loop = loop_factory()
    try:
        return loop.run_until_complete(coro)
    finally:
        try:
            _cancel_leftovers(loop, leftover_grace_s)
        finally:
            loop.close()


def _cancel_leftovers(loop: asyncio.AbstractEventLoop, grace: float) -> None:
    leftovers = [task for task in asyncio.all_tasks(loop) if not task.done()]
    for task in leftovers:
        task.cancel()
    if leftovers:
        loop.run_until_complete(asyncio.wait(leftovers, timeout=grace))
    stuck = [task for task in leftovers if not task.done()]
    if stuck:
        names = sorted({task.get_coro().__qualname__ for task in stuck})  # type: ignore[union-attr]
        log.warning(
            "%d tasks did not stop within %.1fs of being cancelled (%s); exiting without them",
            len(stuck),
            grace,
            ", ".join(names[:5]),
            extra={"stuck_tasks": len(stuck)},
        )
        for task in stuck:
            # Already reported above: no "Task was destroyed but it is pending!" at exit.
            task._log_destroy_pending = False  # type: ignore[attr-defined]
    with contextlib.suppress(Exception):
        loop.run_until_complete(asyncio.wait_for(loop.shutdown_asyncgens(), grace))
