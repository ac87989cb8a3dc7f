"""The event envelope: `Event`, and the default factories of its ``id`` and ``time``.

`Event` is CloudEvents 1.0 compatible: the CloudEvents context attributes
(``dataschema`` included), its extension attributes (``extensions``), plus the
bridge attributes ``kind``, ``key``, ``headers`` (transport headers, not
CloudEvents attributes), ``correlation_id`` and ``ttl_ms``. It is immutable;
validation runs once, when it is built or decoded. docs/cloudevents.md says how
each attribute travels.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from random import getrandbits
from time import time_ns
from typing import Any, Final, Literal

import msgspec

from bridge.errors import InvalidEvent
from bridge.event.attributes import (
    MAX_ATTR_LEN,
    MAX_TTL_MS,
    MAX_TYPE_LEN,
    check_dataschema,
    check_extensions,
    check_headers,
    check_text,
)
from bridge.event.rfc3339 import check_time

Kind = Literal["notification", "domain"]
KINDS: Final = ("notification", "domain")


def new_id() -> str:
    """A fresh event id: UUID version 4 text.

    The random bits come from the `random` module's generator (seeded from
    ``os.urandom``), drawn 65 536 ids at a time: the first 26 hex digits are
    drawn once per block, the last 6 count up from a random start. Ids must be
    unique, not secret, and this formats one short number per id instead of
    drawing and formatting 128 bits. A forked child draws a block of its own.
    """
    global _last_id, _id_serial
    serial = _id_serial = _id_serial + 1
    if serial >= _id_block_end:
        _new_id_block()
        serial = _id_serial
    _last_id = f"{_id_prefix}{serial & 0xFFFFFF:06x}"
    return _last_id


#: The last `new_id` result: an event whose ``id`` is this very object got it
#: from the default factory a moment ago and is valid by construction. It starts
#: as a string built at run time, never ``""``: the empty string is a singleton, so a
#: decoded empty ``id`` would be this very object and skip validation.
_last_id = "".join(("<no id", " yet>"))

_ID_BLOCK: Final = 1 << 16
_UUID_CLEAR: Final = ~((0xF000 << 64) | (0xC000 << 48)) & ((1 << 128) - 1)
_UUID_V4: Final = (0x4000 << 64) | (0x8000 << 48)
_id_prefix = ""
_id_serial = 0
_id_block_end = 0


def _new_id_block() -> None:
    """Draw the random part of the next `_ID_BLOCK` ids."""
    global _id_prefix, _id_serial, _id_block_end
    n = (getrandbits(128) & _UUID_CLEAR) | _UUID_V4
    h = f"{n:032x}"
    _id_prefix = f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:26]}"
    # The counter starts anywhere in the 6 hex digits that may still wrap within the
    # block: the prefix is what keeps blocks apart, the counter ids within one.
    _id_serial = getrandbits(24)
    _id_block_end = _id_serial + _ID_BLOCK


os.register_at_fork(after_in_child=_new_id_block)
_second_text: tuple[int, str] = (-1, "")


def now_rfc3339() -> str:
    """Current time as RFC 3339 UTC with microseconds and a ``Z`` suffix."""
    global _second_text
    now = time_ns() // 1000
    second, micros = divmod(now, 1_000_000)
    cached, text = _second_text
    if cached != second:
        # Formatting a datetime costs a microsecond; do it once per second.
        text = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        _second_text = (second, text)
    global _last_now
    _last_now = f"{text}.{micros:06d}Z"
    return _last_now


#: The last `now_rfc3339` result: an event whose ``time`` is this very object got
#: it from the default factory a moment ago and needs no parsing to validate.
#: Built at run time for the same reason as `_last_id`.
_last_now = "".join(("<no time", " yet>"))
#: Set by `one_instant`: the ``time`` every event built meanwhile defaults to.
_held_now: str | None = None


def _default_time() -> str:
    held = _held_now
    return held if held is not None else now_rfc3339()


@contextmanager
def one_instant() -> Iterator[str]:
    """Events built inside (without a ``time`` of their own) share one ``time``: now.

    For the events of one request, decoded in one synchronous call: they arrived
    together, and a batch then reads the clock and formats a timestamp once
    instead of once per event. Not for code that awaits inside.
    """
    global _held_now
    outer = _held_now
    _held_now = now = outer if outer is not None else now_rfc3339()
    try:
        yield now
    finally:
        _held_now = outer


class Event(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """One event: CloudEvents context attributes, ``data`` and bridge attributes.

    ``kind="notification"`` (default) runs the handlers and then publishes the
    event through the router; ``kind="domain"`` runs the handlers only.
    Construction validates every field and raises `InvalidEvent` naming it.
    """

    type: str
    data: Any = None
    id: str = msgspec.field(default_factory=new_id)
    source: str | None = None
    specversion: str = "1.0"
    time: str = msgspec.field(default_factory=_default_time)
    subject: str | None = None
    #: ``application/json`` is the plain shape's documented default (its ``data`` is JSON);
    #: ``None`` is "not set" (a CloudEvent that did not say) and stays unset downstream.
    datacontenttype: str | None = "application/json"
    kind: Kind = "notification"
    key: str | None = None
    headers: dict[str, str] = {}
    correlation_id: str | None = None
    ttl_ms: int | None = None
    dataschema: str | None = None
    #: CloudEvents extension attributes (name: a-z0-9), delivered as attributes by every
    #: binding (``ce_<name>`` on Kafka, ``cloudEvents:<name>`` on AMQP, top-level members
    #: in the JSON format). Not transport headers: those are ``headers``.
    #: Each value is a str, an int (32-bit) or a bool. Declared ``Any`` so that a wrong
    #: value is refused by `check_extensions`, whose error names the extension.
    extensions: dict[str, Any] = {}

    def __post_init__(self) -> None:
        # Runs for every event decoded or built: unset optional fields and
        # values the default factories just made skip their checks.
        type_ = self.type
        if type(type_) is not str or not 0 < len(type_) <= MAX_TYPE_LEN or not type_.isprintable():
            check_text(type_, "type", MAX_TYPE_LEN, required=True)
        if self.id is not _last_id:
            check_text(self.id, "id", MAX_ATTR_LEN, required=True)
        if self.source is not None:
            check_text(self.source, "source", MAX_ATTR_LEN, required=False)
        if self.subject is not None:
            check_text(self.subject, "subject", MAX_ATTR_LEN, required=False)
        if self.key is not None:
            check_text(self.key, "key", MAX_ATTR_LEN, required=False)
        if self.correlation_id is not None:
            check_text(self.correlation_id, "correlation_id", MAX_ATTR_LEN, required=False)
        if self.datacontenttype != "application/json" and self.datacontenttype is not None:
            check_text(self.datacontenttype, "datacontenttype", MAX_ATTR_LEN, required=False)
        if self.dataschema is not None:
            check_dataschema(self.dataschema)
        if self.specversion != "1.0":
            raise InvalidEvent(
                f"specversion must be '1.0', got {self.specversion!r}", field="specversion"
            )
        if self.kind != "notification" and self.kind != "domain":
            raise InvalidEvent(
                f"kind must be 'notification' or 'domain', got {self.kind!r}", field="kind"
            )
        time = self.time
        if time is not _last_now and time is not _held_now:
            check_time(time)
        if self.ttl_ms is not None and (
            isinstance(self.ttl_ms, bool)
            or not isinstance(self.ttl_ms, int)
            or not 0 < self.ttl_ms <= MAX_TTL_MS
        ):
            raise InvalidEvent(
                f"ttl_ms must be an integer from 1 to {MAX_TTL_MS}, got {self.ttl_ms!r}",
                field="ttl_ms",
            )
        if self.headers:
            check_headers(self.headers)
        if self.extensions:
            check_extensions(self.extensions)
