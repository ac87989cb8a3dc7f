"""What the sink contract suite needs from each sink under test."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import msgspec

from bridge.sinks.base import RouteOptions, Sink


class Received(msgspec.Struct, frozen=True):
    """One event as read back from the sink's destination."""

    id: str
    type: str
    data: bytes
    key: str | None


class ContractTarget(Protocol):
    """A started sink plus a way to read back what it published.

    ``route()`` returns route options pointing at a destination unique to the
    calling test; ``read(route, n)`` waits (with a deadline, never a bare
    sleep) until ``n`` events are readable there and returns them in the order
    the destination keeps them.
    """

    sink: Sink

    def route(self) -> RouteOptions: ...

    async def read(
        self, route: RouteOptions, n: int, timeout: float = 15.0
    ) -> Sequence[Received]: ...
