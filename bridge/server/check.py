"""``evbridge check``: validate the config and run every sink's health check.

Config load validates every route's destinations, dead-letter ones included,
so an invalid one fails the ``config`` line with its key path.

Each sink is started, checked and stopped on its own (each bounded in time),
so one broker that is down does not hide the state of the others. While a
healthy sink is started, each route's destination on it (and each dead-letter
destination) is checked, one line per route, by the sink's `DestinationCheck`
where it has one: the topic, exchange or stream exists, or why it cannot be told. No line
shows a secret: every detail goes through `bridge.redact.scrub`, with the
config's secrets registered as soon as it is loaded.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

from bridge.bus import Bus
from bridge.config import Config, RouteConfig, load_config
from bridge.destinations import Destination
from bridge.errors import BridgeError, ConfigError
from bridge.redact import register_config, scrub
from bridge.server.auth import check_exposure
from bridge.server.listeners import MAX_UNIX_PATH, parse_tcp
from bridge.sinks.base import DestinationCheck, Sink
from bridge.sources import Sources


@dataclass
class Line:
    what: str
    ok: bool
    detail: str


@dataclass
class Report:
    lines: list[Line] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(line.ok for line in self.lines)

    def add(self, what: str, ok: bool, detail: str) -> None:
        self.lines.append(Line(what, ok, scrub(detail)))

    def text(self) -> str:
        width = max((len(line.what) for line in self.lines), default=0)
        out = [
            f"{line.what:<{width}}  {'ok ' if line.ok else 'FAIL'}  {line.detail}"
            for line in self.lines
        ]
        failed = sum(not line.ok for line in self.lines)
        out.append("all checks passed" if not failed else f"{failed} check(s) failed")
        return "\n".join(out)


def _check_listen(config: Config, report: Report) -> None:
    parts = []
    try:
        tcp = parse_tcp(config.listen.tcp, "listen.tcp") if config.listen.tcp else None
        if config.metrics.tcp:
            parse_tcp(config.metrics.tcp, "metrics.tcp")
        check_exposure(config, tcp[0] if tcp else None)
        unix = config.listen.unix
        if unix is not None and len(os.fsencode(unix)) > MAX_UNIX_PATH:
            raise ConfigError(f"listen.unix: {unix!r} is longer than {MAX_UNIX_PATH} bytes")
        if tcp is None and unix is None:
            raise ConfigError("listen: both tcp and unix are null; enable at least one")
    except ConfigError as exc:
        report.add("listen", False, exc.message)
        return
    if config.listen.tcp:
        parts.append(f"tcp {config.listen.tcp}" + (" (token)" if config.auth.token else ""))
    if config.listen.unix:
        parts.append(f"unix {config.listen.unix} (mode {config.listen.unix_mode})")
    if config.metrics.tcp:
        parts.append(f"metrics {config.metrics.tcp}")
    report.add("listen", True, ", ".join(parts))


async def _check_sink(
    name: str,
    kind: str,
    sink: Sink,
    routes: Sequence[RouteConfig],
    timeout: float,  # noqa: ASYNC109
    report: Report,
) -> None:
    what = f"sink {name} ({kind})"
    try:
        await asyncio.wait_for(sink.start(), timeout)
    except TimeoutError:
        report.add(what, False, f"did not start within {timeout:g}s")
        return
    except Exception as exc:
        message = exc.message if isinstance(exc, BridgeError) else f"{type(exc).__name__}: {exc}"
        report.add(what, False, f"failed to start: {message}")
        return
    try:
        health = await asyncio.wait_for(sink.healthcheck(), timeout)
        report.add(what, health.ok, health.detail or ("healthy" if health.ok else "unhealthy"))
        if health.ok and isinstance(sink, DestinationCheck):
            for label, destination in _destinations(name, routes):
                await _check_destination(f"{label} -> {name}", sink, destination, timeout, report)
    except TimeoutError:
        report.add(what, False, f"health check did not answer within {timeout:g}s")
    except Exception as exc:
        report.add(what, False, f"health check failed: {type(exc).__name__}: {exc}")
    finally:
        try:
            await asyncio.wait_for(sink.stop(), timeout)
        except Exception as exc:
            report.add(what, False, f"did not stop cleanly: {type(exc).__name__}: {exc}")


def _destinations(sink: str, routes: Sequence[RouteConfig]) -> list[tuple[str, Destination]]:
    """The destinations on ``sink``: each route's, and each route's dead-letter one."""
    found = [(f"route {r.name}", r.destination) for r in routes if r.sink == sink]
    found += [
        (f"route {r.name} dead letters", r.dead_letter.destination)
        for r in routes
        if r.dead_letter is not None and r.dead_letter.sink == sink
    ]
    return found


async def _check_destination(
    what: str,
    sink: DestinationCheck,
    destination: Destination,
    timeout: float,  # noqa: ASYNC109
    report: Report,
) -> None:
    try:
        health = await asyncio.wait_for(
            sink.check_destination(destination.options, destination.template_names), timeout
        )
    except TimeoutError:
        report.add(what, False, f"destination check did not answer within {timeout:g}s")
        return
    except Exception as exc:
        report.add(what, False, f"destination check failed: {type(exc).__name__}: {exc}")
        return
    report.add(what, health.ok, health.detail)


def _describe_route(route: RouteConfig) -> str:
    # Every destination shown here was validated at load (bridge.destinations).
    dead = f" (dead letters -> {route.dead_letter.sink})" if route.dead_letter else ""
    return f"{route.name}: {route.match} -> {route.sink}{dead}"


async def run_check(path: str | None, where: str, *, timeout: float) -> Report:  # noqa: ASYNC109
    """Check the config at ``path`` (None: env or embedded default) and its sinks."""
    report = Report()
    try:
        config = load_config(path)
    except ConfigError as exc:
        report.add("config", False, exc.message)
        return report
    register_config(config)
    report.add("config", True, where)
    _check_listen(config, report)
    try:
        bus = Bus(config)
    except BridgeError as exc:
        report.add("handlers", False, exc.message)
        return report
    report.add(
        "handlers",
        True,
        f"{len(bus.handlers())} handlers from {len(config.handlers.modules)} configured modules"
        + (f" (importable from {', '.join(config.handlers.path)})" if config.handlers.path else ""),
    )
    try:
        opened = await bus.open_resources()
    except BridgeError as exc:
        report.add("resources", False, exc.message)
    else:
        await bus.close_resources()
        if opened:
            report.add("resources", True, f"{opened} opened and closed")
    report.add(
        "routes",
        True,
        ", ".join(map(_describe_route, config.routes)) or "none",
    )
    kinds = {s.name: s.type for s in config.sinks}
    await asyncio.gather(
        *(
            _check_sink(name, kinds[name], sink, config.routes, timeout, report)
            for name, sink in bus.sinks.items()
        )
    )
    try:
        sources = Sources(config.sources, bus)
    except BridgeError as exc:
        report.add("sources", False, exc.message)
        return report
    for what, health in await sources.check(timeout):
        report.add(what, health.ok, health.detail)
    return report
