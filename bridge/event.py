"""The event envelope and its codecs.

`Event` is CloudEvents 1.0 compatible: the CloudEvents context attributes plus
the bridge attributes ``kind``, ``key``, ``headers``, ``correlation_id`` and
``ttl_ms``. It is immutable; validation runs once, when it is built or decoded.
"""

from __future__ import annotations

import base64
import re
from datetime import UTC, datetime
from random import getrandbits
from time import time_ns
from typing import Any, Final, Literal

import msgspec

from bridge.errors import InvalidEvent

Kind = Literal["notification", "domain"]
KINDS: Final = ("notification", "domain")

MAX_TYPE_LEN: Final = 256
MAX_ATTR_LEN: Final = 1024
#: AMQP table keys are short strings: at most 255 bytes (the name charset is ASCII).
MAX_HEADER_NAME_LEN: Final = 255
MAX_HEADER_VALUE_LEN: Final = 8192
#: JSON carries integers of any size; the spool (msgpack) and broker headers take 64 bits.
MAX_TTL_MS: Final = 2**63 - 1
# Header names travel to Kafka headers and AMQP tables: keep them to a token
# charset so no broker client or downstream HTTP gateway chokes on them.
_HEADER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]*\Z")


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


def _check_text(value: object, field: str, max_len: int, *, required: bool) -> None:
    if value is None:
        if required:
            raise InvalidEvent(f"{field} is required", field=field)
        return
    if not isinstance(value, str):
        raise InvalidEvent(f"{field} must be a string, got {type(value).__name__}", field=field)
    if not value:
        raise InvalidEvent(f"{field} must not be empty", field=field)
    if len(value) > max_len:
        raise InvalidEvent(
            f"{field} is {len(value)} characters, the limit is {max_len}", field=field
        )
    if not value.isprintable():
        raise InvalidEvent(f"{field} contains control characters", field=field)


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
    datacontenttype: str = "application/json"
    kind: Kind = "notification"
    key: str | None = None
    headers: dict[str, str] = {}
    correlation_id: str | None = None
    ttl_ms: int | None = None

    def __post_init__(self) -> None:
        # Runs for every event decoded or built: unset optional fields and
        # values the default factories just made skip their checks.
        type_ = self.type
        if type(type_) is not str or not 0 < len(type_) <= MAX_TYPE_LEN or not type_.isprintable():
            _check_text(type_, "type", MAX_TYPE_LEN, required=True)
        if self.id is not _last_id:
            _check_text(self.id, "id", MAX_ATTR_LEN, required=True)
        if self.source is not None:
            _check_text(self.source, "source", MAX_ATTR_LEN, required=False)
        if self.subject is not None:
            _check_text(self.subject, "subject", MAX_ATTR_LEN, required=False)
        if self.key is not None:
            _check_text(self.key, "key", MAX_ATTR_LEN, required=False)
        if self.correlation_id is not None:
            _check_text(self.correlation_id, "correlation_id", MAX_ATTR_LEN, required=False)
        if self.datacontenttype != "application/json":
            _check_text(self.datacontenttype, "datacontenttype", MAX_ATTR_LEN, required=True)
        if self.specversion != "1.0":
            raise InvalidEvent(
                f"specversion must be '1.0', got {self.specversion!r}", field="specversion"
            )
        if self.kind != "notification" and self.kind != "domain":
            raise InvalidEvent(
                f"kind must be 'notification' or 'domain', got {self.kind!r}", field="kind"
            )
        if self.time is not _last_now:
            _check_time(self.time)
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
            _check_headers(self.headers)


def _check_time(value: object) -> None:
    if not isinstance(value, str):
        raise InvalidEvent(f"time must be an RFC 3339 string, got {value!r}", field="time")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidEvent(f"time is not RFC 3339: {value!r}", field="time") from None
    if parsed.tzinfo is None or "T" not in value.upper():
        raise InvalidEvent(f"time must have a date, a time and an offset: {value!r}", field="time")


def _check_headers(headers: object) -> None:
    """Header names and values that every broker binding can carry as they are.

    A name is 1-255 characters of ``[A-Za-z0-9._:-]`` starting with a letter or
    digit (255: AMQP's short-string limit for table keys); a value is at most
    `MAX_HEADER_VALUE_LEN` characters with no control characters (no CR, LF
    or NUL can reach a broker or a downstream HTTP gateway). The error's
    ``field`` is ``headers.<name>``.
    """
    if not isinstance(headers, dict):
        raise InvalidEvent("headers must be an object of strings", field="headers")
    for name, value in headers.items():
        if not isinstance(name, str):
            raise InvalidEvent("header names must be strings", field="headers")
        field = f"headers.{name[:64]}"
        if len(name) > MAX_HEADER_NAME_LEN:
            raise InvalidEvent(
                f"header name {name[:40]!r}... is {len(name)} characters, "
                f"the limit is {MAX_HEADER_NAME_LEN}",
                field=field,
            )
        if not _HEADER_NAME.match(name):
            raise InvalidEvent(
                f"header name {name!r} must match [A-Za-z0-9][A-Za-z0-9._:-]*", field=field
            )
        if not isinstance(value, str):
            raise InvalidEvent(f"header {name!r} must be a string", field=field)
        if len(value) > MAX_HEADER_VALUE_LEN:
            raise InvalidEvent(
                f"header {name!r} is {len(value)} characters, the limit is {MAX_HEADER_VALUE_LEN}",
                field=field,
            )
        if not value.isprintable():
            raise InvalidEvent(
                f"header {name!r} contains control characters (CR, LF, NUL, ...)", field=field
            )


# --- codecs -----------------------------------------------------------------


class _ExtInData(Exception):
    """A msgpack extension value: no sink can encode it, so it is refused at decode."""


def _refuse_ext(code: int, _data: memoryview) -> object:
    raise _ExtInData(f"data holds a msgpack extension value (type {code}); no broker can take it")


_json_decoder: Final = msgspec.json.Decoder(Event)
# The timestamp extension (-1) is decoded by msgspec itself, as a datetime; any other
# extension would reach the sinks as an object their JSON encoding refuses.
_msgpack_decoder: Final = msgspec.msgpack.Decoder(Event, ext_hook=_refuse_ext)
_json_encoder: Final = msgspec.json.Encoder()

_AT_PATH = re.compile(r" - at `\$(?:\[\d+\])?\.?([^`]*)`")


def field_of(error: msgspec.ValidationError) -> str | None:
    """The dotted field a msgspec validation message points at (``$.a.b`` → ``a.b``)."""
    match = _AT_PATH.search(str(error))
    return match.group(1) or None if match else None


def _invalid(error: msgspec.ValidationError) -> InvalidEvent:
    message = str(error)
    field = field_of(error)
    if field is None:
        # "unknown field `x`" / "missing required field `x`" name it only in the text.
        found = re.search(r"field `([^`]*)`", message)
        field = found.group(1) if found else None
    return InvalidEvent(_AT_PATH.sub("", message), field=field)


def decode_json(body: bytes | str) -> Event:
    """Decode the plain JSON shape of one event.

    Raises `InvalidEvent` (``code='invalid_json'`` for malformed JSON).
    """
    try:
        return _json_decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise _invalid(exc) from None
    except msgspec.DecodeError as exc:
        raise InvalidEvent(f"malformed JSON: {exc}", code="invalid_json") from None


def decode_msgpack(body: bytes) -> Event:
    """Decode the msgpack form of the plain JSON shape.

    ``data`` must be something JSON can carry, as the sinks send it as JSON:
    an extension value (other than timestamps) or a map with array keys is an
    `InvalidEvent` naming ``data``.
    """
    try:
        event = _msgpack_decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise _invalid(exc) from None
    except msgspec.DecodeError as exc:
        raise InvalidEvent(f"malformed msgpack: {exc}", code="invalid_msgpack") from None
    except _ExtInData as exc:
        raise InvalidEvent(str(exc), field="data") from None
    if isinstance(event.data, dict | list):
        try:
            _json_encoder.encode(event.data)
        except TypeError as exc:  # msgpack map keys that are arrays become tuples
            raise InvalidEvent(f"data cannot be sent as JSON: {exc}", field="data") from None
    return event


def convert(obj: object) -> Event:
    """Build an event from an already-decoded mapping of the plain JSON shape."""
    try:
        return msgspec.convert(obj, Event)
    except msgspec.ValidationError as exc:
        raise _invalid(exc) from None


def data_bytes(event: Event) -> bytes:
    """The event's ``data`` as bytes: raw bytes as-is, anything else JSON-encoded."""
    data = event.data
    if isinstance(data, bytes | bytearray | memoryview):
        return bytes(data)
    if isinstance(data, str) and not event.datacontenttype.endswith("json"):
        return data.encode()
    return _json_encoder.encode(data)


def to_plain(event: Event) -> dict[str, Any]:
    """Every envelope field as JSON-ready values; bytes ``data`` becomes ``data_base64``."""
    out = msgspec.structs.asdict(event)
    if isinstance(event.data, bytes | bytearray | memoryview):
        del out["data"]
        out["data_base64"] = base64.b64encode(bytes(event.data)).decode()
    return out


# CloudEvents structured mode (JSON event format). The bridge attributes travel
# as extension attributes, whose names the spec limits to lowercase a-z0-9.
_CE_EXTENSIONS: Final = {"kind": "kind", "key": "partitionkey", "correlation_id": "correlationid"}


def to_structured(event: Event) -> dict[str, Any]:
    """The event as a CloudEvents JSON-format object (``data_base64`` for bytes)."""
    out: dict[str, Any] = {
        "specversion": event.specversion,
        "id": event.id,
        "source": event.source,
        "type": event.type,
        "time": event.time,
        "datacontenttype": event.datacontenttype,
    }
    if event.subject is not None:
        out["subject"] = event.subject
    for attr, ext in _CE_EXTENSIONS.items():
        value = getattr(event, attr)
        if value is not None:
            out[ext] = value
    if event.ttl_ms is not None:
        out["ttl"] = event.ttl_ms
    if isinstance(event.data, bytes | bytearray | memoryview):
        out["data_base64"] = base64.b64encode(bytes(event.data)).decode()
    elif event.data is not None:
        out["data"] = event.data
    return out


_CE_REQUIRED: Final = ("id", "source", "type", "specversion")
_CE_CONTEXT: Final = {"id", "source", "type", "specversion", "time", "subject", "datacontenttype"}


def from_structured(obj: object, *, headers: dict[str, str] | None = None) -> Event:
    """Build an event from a decoded CloudEvents JSON-format object.

    Unknown extension attributes are kept as string headers, so nothing the
    producer sent is lost on the way to the broker.
    """
    if not isinstance(obj, dict):
        raise InvalidEvent("a CloudEvent must be a JSON object", field=None)
    for name in _CE_REQUIRED:
        # A null required attribute is as absent as a missing one (CloudEvents JSON format).
        if obj.get(name) is None:
            raise InvalidEvent(f"CloudEvents attribute {name!r} is required", field=name)
    fields: dict[str, Any] = {k: v for k, v in obj.items() if k in _CE_CONTEXT}
    extra_headers: dict[str, str] = dict(headers or {})
    for name, value in obj.items():
        if name in _CE_CONTEXT or name in ("data", "data_base64"):
            continue
        if name == "kind":
            fields["kind"] = value
        elif name == "partitionkey":
            fields["key"] = value
        elif name == "correlationid":
            fields["correlation_id"] = value
        elif name == "ttl":
            fields["ttl_ms"] = value
        elif isinstance(value, str | int | float | bool):
            extra_headers[name] = (
                value if isinstance(value, str) else _json_encoder.encode(value).decode()
            )
        else:
            raise InvalidEvent(f"extension attribute {name!r} must be a scalar", field=name)
    if "data_base64" in obj:
        if "data" in obj:
            raise InvalidEvent("data and data_base64 are mutually exclusive", field="data_base64")
        try:
            fields["data"] = base64.b64decode(obj["data_base64"], validate=True)
        except (ValueError, TypeError):
            raise InvalidEvent("data_base64 is not valid base64", field="data_base64") from None
    elif "data" in obj:
        fields["data"] = obj["data"]
    if extra_headers:
        fields["headers"] = extra_headers
    return convert(fields)
