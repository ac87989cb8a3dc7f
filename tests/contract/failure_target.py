"""What the failure contract needs from each broker sink under test."""

from __future__ import annotations

from typing import Protocol

from bridge.sinks.base import RouteOptions, Sink


class FailureTarget(Protocol):
    """A broker the test owns (it may stop it) and sinks pointed at it.

    The broker starts stopped: `start_broker` starts it (again) with the
    same state; `stop_broker` stops it by pid. `sink()` builds an unstarted
    sink that reaches it, `refused_sink()` one whose credentials it refuses.
    `route()` names a destination that exists once the broker is up and a
    sink connected to it; `missing_route()` one that never exists. An event
    whose ``data`` has more than `too_large_bytes` bytes is refused as too large.

    `not_applicable` maps a case the broker cannot exercise (``"credentials_refused"``
    when it cannot check credentials) to the precise reason; that test is skipped
    with the reason, never passed silently.
    """

    too_large_bytes: int
    not_applicable: dict[str, str]

    async def start_broker(self) -> None: ...

    def stop_broker(self) -> None: ...

    def sink(self) -> Sink: ...

    def refused_sink(self) -> Sink: ...

    def route(self) -> RouteOptions: ...

    def missing_route(self) -> RouteOptions: ...
