"""The event envelope: `Event`, and the default factories of its ``id`` and ``time``.

`Event` is CloudEvents 1.0 compatible: the CloudEvents context attributes
(``dataschema`` included), its extension attributes (``extensions``), plus the
bridge attributes ``kind``, ``key``, ``headers`` (transport headers, not
CloudEvents attributes), ``correlation_id`` and ``ttl_ms``. It is immutable;
validation runs once, when it is built or decoded. docs/cloudevents.md says how
each attribute travels.
"""

from __future__ import annotations

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

    The 122 random bits come from the `random` module's generator (seeded
    from ``os.urandom`` and reseeded in forked children), not one
    ``os.urandom`` system call per id: ids must be unique, not secret.
    """
    global _last_id
    n = (getrandbits(128) & _UUID_CLEAR) | _UUID_V4
    h = f"{n:032x}"
    _last_id = f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
    return _last_id


#: The last `new_id` result: an event whose ``id`` is this very object got it
#: from the default factory a moment ago and is valid by construction. It starts
#: as a string built at run time, never ``""``: the empty string is a singleton, so a
#: decoded empty ``id`` would be this very object and skip validation.
_last_id = "".join(("<no id", " yet>"))


_UUID_CLEAR: Final = ~((0xF000 << 64) | (0xC000 << 48)) & ((1 << 128) - 1)
_UUID_V4: Final = (0x4000 << 64) | (0x8000 << 48)
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
    time: str = msgspec.field(default_factory=now_rfc3339)
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
        if self.time is not _last_now:
            check_time(self.time)
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
