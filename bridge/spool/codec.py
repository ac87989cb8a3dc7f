"""What a spool record holds: one routed event (an `Outgoing`) in msgpack.

A record is a msgpack array ``[sink, route, key, accepted_ns, options, event]``:
the sink name, the route name, the rendered partition/routing key, when the
bridge accepted it (ns since the epoch), the rendered route options (the sink
type's `RouteOptions` struct) and the event envelope. A dead letter is the same
array with ``reason, code, dead_ns, attempts`` appended, so `head` reads both.

A record read back from a file is not trusted more than a request: its event is
validated exactly as ingest validates one (`Event`'s own checks), and, given the
routes, its destination is resolved again from the event by the current
routes, never taken from the record. A record that fails either raises
`InvalidRecord`; the deliverer keeps it in the local dead-letter area.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any, Final

import msgspec

from bridge.config import RouteConfig
from bridge.errors import BridgeError, InvalidEvent
from bridge.event import Event
from bridge.metrics import METRICS, Metrics
from bridge.routing import Router
from bridge.sinks.base import Outgoing, RouteOptions
from bridge.spool.throttle import Throttled

log = logging.getLogger("bridge.spool")


class InvalidRecord(BridgeError):
    """A spooled record whose event fails validation or that the current routes do not
    send to the sink it was spooled for."""

    code = "invalid_record"
    retriable = False


class _Head(msgspec.Struct, array_like=True, frozen=True):
    sink: str
    route: str
    key: str | None
    accepted_ns: int


class _Record(msgspec.Struct, array_like=True, frozen=True):
    sink: str
    route: str
    key: str | None
    accepted_ns: int
    options: Any
    event: Any


class _DeadLetter(msgspec.Struct, array_like=True, frozen=True):
    sink: str
    route: str
    key: str | None
    accepted_ns: int
    options: Any
    event: Any
    reason: str
    code: str
    dead_ns: int
    attempts: int


class _RawRecord(msgspec.Struct, array_like=True, frozen=True):
    sink: str
    route: str
    key: str | None
    accepted_ns: int
    options: msgspec.Raw
    event: msgspec.Raw


class _RawDeadLetter(msgspec.Struct, array_like=True, frozen=True):
    sink: str
    route: str
    key: str | None
    accepted_ns: int
    options: msgspec.Raw
    event: msgspec.Raw
    reason: str
    code: str
    dead_ns: int
    attempts: int


_encode: Final = msgspec.msgpack.Encoder().encode
_head_decoder: Final = msgspec.msgpack.Decoder(_Head)
_raw_decoder: Final = msgspec.msgpack.Decoder(_RawRecord)
_raw_dead_decoder: Final = msgspec.msgpack.Decoder(_RawDeadLetter)
# The full `Event`, with its validation: a record is checked like an ingested event.
_event_decoder: Final = msgspec.msgpack.Decoder(Event)
_OPTIONS_CACHE: Final = 1024


def encode(sink: str, item: Outgoing, accepted_ns: int | None = None) -> bytes:
    """The spool record of ``item`` bound for ``sink``.

    Raises `InvalidEvent` for event data msgpack cannot hold (integers beyond 64 bits).
    """
    record = _Record(
        sink,
        item.route,
        item.key,
        time.time_ns() if accepted_ns is None else accepted_ns,
        item.options,
        item.event,
    )
    try:
        return _encode(record)
    except (OverflowError, TypeError) as exc:
        raise InvalidEvent(f"the event cannot be spooled: {exc}", field="data") from None


def sink_prefix(sink: str) -> bytes:
    """The bytes every record for ``sink`` starts with (msgpack is length-prefixed, so no
    other sink's records do): lets a reader pick a sink's records without decoding."""
    return b"\x96" + _encode(sink)


def head(payload: bytes) -> tuple[str, int]:
    """``(sink, accepted_ns)`` of a record or dead letter."""
    found = _head_decoder.decode(payload)
    return found.sink, found.accepted_ns


class Decoded(msgspec.Struct, frozen=True):
    sink: str
    outgoing: Outgoing
    accepted_ns: int


class Decoder:
    """Turns records back into `Outgoing` items; ``route_types`` maps sink name →
    its type's route options class (``get_sink_type(config.type).route``).

    With ``routes`` (the current config's), each record's destination (route,
    options, key) is resolved again from its validated event, as at ingest; the
    one stored in the record is not used. Without, the stored one is (tools
    that only look at records).
    """

    def __init__(
        self,
        route_types: Mapping[str, type[RouteOptions]],
        routes: Sequence[RouteConfig] | None = None,
        *,
        metrics: Metrics = METRICS,
    ) -> None:
        #: Where refused records are counted (the deliverer's, which is the bus's).
        self._metrics = metrics
        self._options = {sink: msgspec.msgpack.Decoder(cls) for sink, cls in route_types.items()}
        # Most records of a route carry the same options: decode each distinct one once.
        self._seen: dict[tuple[str, bytes], RouteOptions] = {}
        self._router = Router(routes) if routes is not None else None
        self._invalid = Throttled(log, logging.WARNING)

    def decode(self, payload: bytes) -> Decoded:
        """Raises `msgspec.DecodeError` / `KeyError` (unknown sink) for a record it cannot
        read and `InvalidRecord` for one whose event or destination does not hold."""
        raw = _raw_decoder.decode(payload)
        if raw.sink not in self._options:
            raise KeyError(raw.sink)
        try:
            event = _event_decoder.decode(raw.event)
        except msgspec.ValidationError as exc:
            raise self._refuse(raw.sink, f"its event is not valid: {exc}") from None
        except InvalidEvent as exc:
            raise self._refuse(raw.sink, f"its event is not valid: {exc.message}") from None
        if self._router is not None:
            return Decoded(raw.sink, self._resolve(raw.sink, event), raw.accepted_ns)
        key = (raw.sink, bytes(raw.options))
        options = self._seen.get(key)
        if options is None:
            options = self._options[raw.sink].decode(raw.options)
            if len(self._seen) >= _OPTIONS_CACHE:
                self._seen.clear()
            self._seen[key] = options
        return Decoded(raw.sink, Outgoing(event, raw.route, options, raw.key), raw.accepted_ns)

    def _resolve(self, sink: str, event: Event) -> Outgoing:
        assert self._router is not None
        if event.kind != "notification":
            raise self._refuse(sink, f"its event is of kind {event.kind!r}, which is not routed")
        try:
            found, outgoing = self._router.resolve(event)
        except BridgeError as exc:
            raise self._refuse(
                sink, f"the current routes do not resolve it: {exc.message}"
            ) from None
        if found != sink:
            raise self._refuse(sink, f"the current routes send it to sink {found!r}, not {sink!r}")
        return outgoing

    def _refuse(self, sink: str, why: str) -> InvalidRecord:
        """Count, log (once per interval) and build the error for one invalid record."""
        self._metrics.error("spool_recovery", InvalidRecord.code)
        self._invalid.note("spooled record for sink %s refused: %s", sink, why)
        return InvalidRecord(f"the spooled record was refused: {why}")


def to_dead_letter(payload: bytes, reason: str, code: str, attempts: int) -> bytes:
    """A dead letter made from a record, with why it was given up on."""
    raw = _raw_decoder.decode(payload)
    return _encode(
        _RawDeadLetter(
            raw.sink,
            raw.route,
            raw.key,
            raw.accepted_ns,
            raw.options,
            raw.event,
            reason,
            code,
            time.time_ns(),
            attempts,
        )
    )


def revive(dead_letter: bytes) -> bytes:
    """A fresh record from a dead letter (accepted now, so retry limits start over)."""
    raw = _raw_dead_decoder.decode(dead_letter)
    return _encode(_RawRecord(raw.sink, raw.route, raw.key, time.time_ns(), raw.options, raw.event))


class DeadLetterView(msgspec.Struct, frozen=True):
    """A dead letter as `evbridge spool` lists it."""

    sink: str
    route: str
    key: str | None
    event_id: str
    event_type: str
    reason: str
    code: str
    attempts: int
    accepted_ns: int
    dead_ns: int


def view_dead_letter(payload: bytes) -> DeadLetterView:
    raw = _raw_dead_decoder.decode(payload)
    event = msgspec.msgpack.decode(raw.event)
    event_id = event.get("id", "?") if isinstance(event, dict) else "?"
    event_type = event.get("type", "?") if isinstance(event, dict) else "?"
    return DeadLetterView(
        raw.sink,
        raw.route,
        raw.key,
        str(event_id),
        str(event_type),
        raw.reason,
        raw.code,
        raw.attempts,
        raw.accepted_ns,
        raw.dead_ns,
    )
