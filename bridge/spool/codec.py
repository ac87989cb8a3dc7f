"""What a spool record holds: one routed event (an `Outgoing`) in msgpack.

A record is a msgpack array ``[sink, route, key, accepted_ns, options, event]``:
the sink name, the route name, the rendered partition/routing key, when the
bridge accepted it (ns since the epoch), the rendered route options (the sink
type's `RouteOptions` struct) and the event envelope. A dead letter is the same
array with ``reason, code, dead_ns, attempts`` appended, so `head` reads both.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, Final

import msgspec

from bridge.errors import InvalidEvent
from bridge.event import Event
from bridge.sinks.base import Outgoing, RouteOptions


class SpooledEvent(Event, frozen=True):
    """An `Event` read back from the spool.

    It was validated when the bridge accepted it and its record passed the
    spool's checksums, so decoding skips the validation (5x faster).
    """

    def __post_init__(self) -> None:
        pass


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
_event_decoder: Final = msgspec.msgpack.Decoder(SpooledEvent)
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
    its type's route options class (``get_sink_type(config.type).route``)."""

    def __init__(self, route_types: Mapping[str, type[RouteOptions]]) -> None:
        self._options = {sink: msgspec.msgpack.Decoder(cls) for sink, cls in route_types.items()}
        # Most records of a route carry the same options: decode each distinct one once.
        self._seen: dict[tuple[str, bytes], RouteOptions] = {}

    def decode(self, payload: bytes) -> Decoded:
        """Raises `msgspec.DecodeError` / `KeyError` (unknown sink) for a record it cannot read."""
        raw = _raw_decoder.decode(payload)
        key = (raw.sink, bytes(raw.options))
        options = self._seen.get(key)
        if options is None:
            options = self._options[raw.sink].decode(raw.options)
            if len(self._seen) >= _OPTIONS_CACHE:
                self._seen.clear()
            self._seen[key] = options
        event = _event_decoder.decode(raw.event)
        return Decoded(raw.sink, Outgoing(event, raw.route, options, raw.key), raw.accepted_ns)


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
