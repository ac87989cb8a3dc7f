"""Where a spooled event goes when the deliverer gives up on it.

A record that failed non-retriably, or ran out of attempts or age
(`bridge.retry`), is published to its route's ``dead_letter`` destination with
the reason in ``evbridge-dead-letter-*`` headers. With no such destination, or
if publishing the dead letter fails too, it is kept in the spool's local
dead-letter area for ``evbridge spool replay-dead-letters``; so is a record
that cannot be read back at all.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Protocol

import msgspec

from bridge.config import RouteConfig
from bridge.delivery import Publisher
from bridge.destinations import Destination
from bridge.errors import BridgeError, SinkError
from bridge.metrics import Metrics
from bridge.sinks.base import Outgoing
from bridge.spool import codec
from bridge.spool.store import Spool, SpoolItem

# The deliverer's log: a dead letter is one of a delivery's outcomes.
log = logging.getLogger("bridge.deliverer")

HEADER_PREFIX: Final = "evbridge-dead-letter-"
_MAX_REASON: Final = 1024


class Undeliverable(Protocol):
    """A spooled record the deliverer gave up on (a lane's window entry)."""

    @property
    def item(self) -> SpoolItem: ...
    @property
    def outgoing(self) -> Outgoing: ...
    @property
    def destination(self) -> str: ...
    @property
    def attempts(self) -> int: ...


@dataclass(frozen=True, eq=False)
class DeadLetterRoute:
    """A route's ``dead_letter``: the sink's publisher and the destination."""

    publisher: Publisher
    #: Compiled and validated at config load, with the route (`bridge.destinations`).
    destination: Destination

    def outgoing(self, entry: Undeliverable, reason: str, code: str) -> Outgoing:
        """The dead letter for ``entry``; raises `BridgeError` if its destination renders
        to one the sink refuses."""
        event = entry.outgoing.event
        headers = {
            **event.headers,
            f"{HEADER_PREFIX}reason": _printable(reason),
            f"{HEADER_PREFIX}code": _printable(code),
            f"{HEADER_PREFIX}sink": entry.item.sink,
            f"{HEADER_PREFIX}route": entry.outgoing.route,
            f"{HEADER_PREFIX}destination": entry.destination,
            f"{HEADER_PREFIX}attempts": str(entry.attempts),
        }
        dead_event = msgspec.structs.replace(event, headers=headers)
        options = self.destination.options_for(dead_event)
        return Outgoing(dead_event, entry.outgoing.route, options, entry.outgoing.key)


def dead_letter_routes(
    routes: Sequence[RouteConfig], publishers: Mapping[str, Publisher]
) -> dict[str, DeadLetterRoute]:
    """By route name, the dead-letter route of every route that names a ``dead_letter``."""
    return {
        route.name: DeadLetterRoute(
            publishers[route.dead_letter.sink], route.dead_letter.destination
        )
        for route in routes
        if route.dead_letter is not None
    }


def _printable(text: str) -> str:
    cleaned = "".join(ch if ch.isprintable() else " " for ch in text)
    return cleaned[:_MAX_REASON] or "-"


class DeadLetters:
    """Dead-letters one sink's records: to their route's destination, else locally."""

    def __init__(
        self,
        sink: str,
        spool: Spool,
        metrics: Metrics,
        route_for: Callable[[str], DeadLetterRoute | None],
    ) -> None:
        self.sink = sink
        self._spool = spool
        self._metrics = metrics
        self._route_for = route_for

    async def dead_letter(self, dead: Sequence[tuple[Undeliverable, str, str]]) -> None:
        """Publish each (entry, reason, code) to its route's dead-letter destination, and
        acknowledge it to the spool; keep the rest locally."""
        local: list[tuple[Undeliverable, str, str]] = []
        by_route: dict[DeadLetterRoute, list[tuple[Undeliverable, str, str, Outgoing]]] = {}
        for entry, reason, code in dead:
            route = self._route_for(entry.outgoing.route)
            if route is None:
                local.append((entry, reason, code))
                continue
            try:
                outgoing = route.outgoing(entry, reason, code)
            except BridgeError as exc:
                local.append((entry, f"{reason}; dead-letter destination: {exc.message}", code))
                continue
            by_route.setdefault(route, []).append((entry, reason, code, outgoing))
        for route, entries in by_route.items():
            results = await route.publisher.publish_many([o for *_, o in entries])
            published: list[SpoolItem] = []
            for (entry, reason, code, _), result in zip(entries, results, strict=True):
                if isinstance(result, SinkError):
                    local.append(
                        (
                            entry,
                            f"{reason}; publishing the dead letter failed: {result.message}",
                            code,
                        )
                    )
                    continue
                published.append(entry.item)
                self._dead_lettered(entry, reason, code, "dead-letter destination")
            self._spool.ack(published)
        if local:
            await self.keep_locally(
                [
                    (
                        entry.item,
                        codec.to_dead_letter(entry.item.payload, reason, code, entry.attempts),
                    )
                    for entry, reason, code in local
                ],
                None,
            )
            for entry, reason, code in local:
                self._dead_lettered(entry, reason, code, "local dead-letter area")

    def _dead_lettered(self, entry: Undeliverable, reason: str, code: str, where: str) -> None:
        self._metrics.dead_lettered.labels(self.sink, code).inc()
        event = entry.outgoing.event
        log.warning(
            "event %s %s to %s dead-lettered to the %s after %d attempts: %s (%s)",
            event.type,
            event.id,
            entry.destination,
            where,
            entry.attempts,
            reason,
            code,
        )

    async def keep_locally(self, records: list[tuple[SpoolItem, bytes]], code: str | None) -> None:
        """Move records to the spool's dead-letter area; retried until the disk takes them.

        With ``code``, they are counted and logged here under it (records that never
        became an event); without, the caller counts and logs each."""
        delay = 0.1
        while True:
            try:
                await self._spool.dead_letter([i for i, _ in records], [p for _, p in records])
                break
            except BridgeError as exc:
                log.error("could not store %d dead letters (%s); retrying", len(records), exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        if code is not None:
            self._metrics.dead_lettered.labels(self.sink, code).inc(len(records))
            log.warning(
                "%d spooled records for sink %s kept in the local dead-letter area (%s)",
                len(records),
                self.sink,
                code,
            )
