"""The event envelope and its codecs.

`Event` is CloudEvents 1.0 compatible: the CloudEvents context attributes
(``dataschema`` included), its extension attributes (``extensions``), plus the
bridge attributes ``kind``, ``key``, ``headers`` (transport headers, not
CloudEvents attributes), ``correlation_id`` and ``ttl_ms``. It is immutable;
validation runs once, when it is built or decoded. docs/cloudevents.md says how
each attribute travels.
"""

from __future__ import annotations

import base64
import calendar
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
#: CloudEvents says extension names SHOULD NOT exceed 20 characters; a MUST is only the
#: charset. Longer names are accepted (refusing them would lose a conformant producer's
#: event) up to this bound, which keeps the prefixed broker header names short.
MAX_EXTENSION_NAME_LEN: Final = 64
_EXTENSION_NAME = re.compile(r"[a-z0-9]+\Z")
#: CloudEvents Integer: a 32-bit signed integer.
_INT32_MIN: Final = -(2**31)
_INT32_MAX: Final = 2**31 - 1
#: Names an extension cannot take: the context attributes, the JSON format's data
#: members, and the names the bridge attributes travel under (set those fields instead).
RESERVED_ATTRIBUTES: Final = frozenset(
    {"id", "source", "specversion", "type", "datacontenttype", "dataschema", "subject", "time"}
    | {"data", "data_base64"}
)
BRIDGE_EXTENSIONS: Final = {
    "kind": "kind",
    "partitionkey": "key",
    "correlationid": "correlation_id",
    "ttl": "ttl_ms",
}


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
    #: value is refused by `_check_extensions`, whose error names the extension.
    extensions: dict[str, Any] = {}

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
        if self.datacontenttype != "application/json" and self.datacontenttype is not None:
            _check_text(self.datacontenttype, "datacontenttype", MAX_ATTR_LEN, required=False)
        if self.dataschema is not None:
            _check_dataschema(self.dataschema)
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
        if self.extensions:
            _check_extensions(self.extensions)


# RFC 3339 section 5.6 date-time, exactly: "T" and "Z" in either case (5.6 allows
# lower case), any number of fraction digits, "Z" or a numeric offset. ASCII digits only.
_RFC3339: Final = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt]([0-9]{2}):([0-9]{2}):([0-9]{2})(\.[0-9]+)?"
    r"(?:[Zz]|([+-])([0-9]{2}):([0-9]{2}))\Z"
)


def _parse_time(value: str) -> tuple[int, ...] | None:
    """The fields of an RFC 3339 date-time, or None when ``value`` is not one.

    Returns ``(year, month, day, hour, minute, second, offset_minutes)``. Month
    lengths and leap years are checked; second 60 (a leap second, RFC 3339 5.7)
    is allowed when the minute is 59 in the given offset.
    """
    match = _RFC3339.match(value)
    if match is None:
        return None
    year, month, day, hour, minute, second = (int(g) for g in match.group(1, 2, 3, 4, 5, 6))
    sign, off_h, off_m = match.group(8, 9, 10)
    offset = 0
    if sign is not None:
        if int(off_h) > 23 or int(off_m) > 59:
            return None
        offset = (int(off_h) * 60 + int(off_m)) * (-1 if sign == "-" else 1)
    if not 1 <= month <= 12 or not 1 <= day <= calendar.monthrange(year, month)[1]:
        return None
    if hour > 23 or minute > 59 or second > 60 or (second == 60 and minute != 59):
        return None
    return year, month, day, hour, minute, second, offset


def _check_time(value: object) -> None:
    if not isinstance(value, str):
        raise InvalidEvent(f"time must be an RFC 3339 string, got {value!r}", field="time")
    if _parse_time(value) is None:
        raise InvalidEvent(
            f"time is not an RFC 3339 date-time (like 2026-11-22T07:25:00Z): {value[:64]!r}",
            field="time",
        )


def epoch_seconds(time_text: str) -> int:
    """Whole seconds since 1970 of a validated RFC 3339 ``time`` (a leap second counts as 59)."""
    parsed = _parse_time(time_text)
    if parsed is None:
        raise ValueError(f"not an RFC 3339 date-time: {time_text!r}")
    year, month, day, hour, minute, second, offset = parsed
    local = calendar.timegm((year, month, day, hour, minute, min(second, 59)))
    return local - offset * 60


_URI_SCHEME: Final = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")


def _check_dataschema(value: str) -> None:
    _check_text(value, "dataschema", MAX_ATTR_LEN, required=False)
    if not _URI_SCHEME.match(value):
        raise InvalidEvent(
            f"dataschema must be an absolute URI (with a scheme), got {value!r}",
            field="dataschema",
        )


def check_extension_name(name: object, field: str) -> None:
    """Raise `InvalidEvent` (``field``) unless ``name`` can be a CloudEvents extension name.

    CloudEvents: lower-case ``a-z`` and ``0-9`` only; at most `MAX_EXTENSION_NAME_LEN`
    characters here; not a context attribute (`RESERVED_ATTRIBUTES`).
    """
    if not isinstance(name, str):
        raise InvalidEvent("extension names must be strings", field="extensions")
    if not _EXTENSION_NAME.match(name):
        raise InvalidEvent(
            f"extension attribute name {name[:64]!r} must be lower-case letters a-z "
            "and digits 0-9 only (CloudEvents)",
            field=field,
        )
    if len(name) > MAX_EXTENSION_NAME_LEN:
        raise InvalidEvent(
            f"extension attribute name {name[:40]!r}... is {len(name)} characters, "
            f"the limit is {MAX_EXTENSION_NAME_LEN}",
            field=field,
        )
    if name in RESERVED_ATTRIBUTES:
        raise InvalidEvent(
            f"{name!r} is a CloudEvents context attribute, not an extension", field=field
        )


def check_extension_value(name: str, value: object, field: str) -> None:
    """Raise `InvalidEvent` unless ``value`` is a CloudEvents String, Integer or Boolean
    that every binding carries: text without control characters of at most
    `MAX_HEADER_VALUE_LEN` characters, or a 32-bit integer."""
    if isinstance(value, bool):
        return
    if isinstance(value, int):
        if not _INT32_MIN <= value <= _INT32_MAX:
            raise InvalidEvent(
                f"extension {name!r} is {value}; a CloudEvents Integer is 32-bit signed",
                field=field,
            )
        return
    if not isinstance(value, str):
        raise InvalidEvent(
            f"extension {name!r} must be a string, an integer or a boolean, "
            f"got {type(value).__name__}",
            field=field,
        )
    if len(value) > MAX_HEADER_VALUE_LEN:
        raise InvalidEvent(
            f"extension {name!r} is {len(value)} characters, the limit is {MAX_HEADER_VALUE_LEN}",
            field=field,
        )
    if not value.isprintable():
        raise InvalidEvent(f"extension {name!r} contains control characters", field=field)


def _check_extensions(extensions: object) -> None:
    """Every extension: a valid name that is not a bridge attribute's, and a valid value.
    The error's ``field`` is ``extensions.<name>``."""
    if not isinstance(extensions, dict):
        raise InvalidEvent("extensions must be an object", field="extensions")
    for name, value in extensions.items():
        field = f"extensions.{str(name)[:64]}"
        check_extension_name(name, field)
        if name in BRIDGE_EXTENSIONS:
            raise InvalidEvent(
                f"{name!r} is the bridge attribute {BRIDGE_EXTENSIONS[name]!r}; set that field",
                field=field,
            )
        check_extension_value(name, value, field)


def extension_text(value: str | int | bool) -> str:
    """An extension value in the CloudEvents canonical string form (headers carry text)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return value if isinstance(value, str) else str(value)


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
    """The event's ``data`` as bytes: raw bytes as-is, anything else JSON-encoded.

    Text stays text (UTF-8) when ``datacontenttype`` is set and not JSON; an unset
    content type means JSON, as in the CloudEvents JSON format.
    """
    data = event.data
    if isinstance(data, bytes | bytearray | memoryview):
        return bytes(data)
    content_type = event.datacontenttype
    if isinstance(data, str) and content_type is not None and not _is_json(content_type):
        return data.encode()
    return _json_encoder.encode(data)


def _is_json(content_type: str) -> bool:
    media = content_type.partition(";")[0].strip().lower()
    return media.endswith(("/json", "+json"))


def wire_content_type(event: Event) -> str | None:
    """The content type of `data_bytes` for a binary-mode message.

    The event's ``datacontenttype`` when set; when unset, ``application/json`` for
    data the bridge JSON-encodes (that is what the bytes are) and nothing for raw
    bytes nobody described.
    """
    content_type = event.datacontenttype
    if content_type is not None:
        return content_type
    if isinstance(event.data, bytes | bytearray | memoryview):
        return None
    return "application/json"


def to_plain(event: Event) -> dict[str, Any]:
    """Every envelope field as JSON-ready values; bytes ``data`` becomes ``data_base64``."""
    out = msgspec.structs.asdict(event)
    if isinstance(event.data, bytes | bytearray | memoryview):
        del out["data"]
        out["data_base64"] = base64.b64encode(bytes(event.data)).decode()
    return out


# CloudEvents structured mode (JSON event format). ``kind`` is the bridge's own
# routing choice and never leaves it (a domain event reaches no sink at all); the
# other bridge attributes a producer can set travel as named extensions.
_CE_EXTENSIONS: Final = {"key": "partitionkey", "correlation_id": "correlationid"}


def to_structured(event: Event) -> dict[str, Any]:
    """The event as a CloudEvents JSON-format object (``data_base64`` for bytes).

    Only attributes that are set appear: an unset ``datacontenttype`` stays unset
    (JSON, by the format's rule). Extensions are top-level members.
    """
    out: dict[str, Any] = {
        "specversion": event.specversion,
        "id": event.id,
        "source": event.source,
        "type": event.type,
        "time": event.time,
    }
    if event.datacontenttype is not None:
        out["datacontenttype"] = event.datacontenttype
    if event.dataschema is not None:
        out["dataschema"] = event.dataschema
    if event.subject is not None:
        out["subject"] = event.subject
    for attr, ext in _CE_EXTENSIONS.items():
        value = getattr(event, attr)
        if value is not None:
            out[ext] = value
    if event.ttl_ms is not None:
        out["ttl"] = event.ttl_ms
    if event.extensions:
        # The names cannot collide with the members above: `_check_extensions`.
        out.update(event.extensions)
    if isinstance(event.data, bytes | bytearray | memoryview):
        out["data_base64"] = base64.b64encode(bytes(event.data)).decode()
    elif event.data is not None:
        out["data"] = event.data
    return out


_CE_REQUIRED: Final = ("id", "source", "type", "specversion")
_CE_CONTEXT: Final = {
    "id", "source", "type", "specversion", "time", "subject", "datacontenttype", "dataschema"
}  # fmt: skip


def from_structured(obj: object, *, headers: dict[str, str] | None = None) -> Event:
    """Build an event from a decoded CloudEvents JSON-format object.

    Top-level members that are not context attributes are extension attributes
    (`Event.extensions`), except ``kind``, ``partitionkey``, ``correlationid`` and
    ``ttl``, which set the bridge attributes. A null member is an absent one.
    ``headers`` are transport headers to attach. An extension with an invalid
    name or value raises `InvalidEvent` whose ``field`` is the member's name.
    """
    if not isinstance(obj, dict):
        raise InvalidEvent("a CloudEvent must be a JSON object", field=None)
    for name in _CE_REQUIRED:
        # A null required attribute is as absent as a missing one (CloudEvents JSON format).
        if obj.get(name) is None:
            raise InvalidEvent(f"CloudEvents attribute {name!r} is required", field=name)
    fields: dict[str, Any] = {k: v for k, v in obj.items() if k in _CE_CONTEXT and v is not None}
    # The attribute was not set: do not let the plain shape's default fill it in.
    fields.setdefault("datacontenttype", None)
    extensions: dict[str, Any] = {}
    for name, value in obj.items():
        if name in _CE_CONTEXT or name in ("data", "data_base64") or value is None:
            continue
        target = BRIDGE_EXTENSIONS.get(name)
        if target is not None:
            fields[target] = value
            continue
        check_extension_name(name, name)
        check_extension_value(name, value, name)
        extensions[name] = value
    if "data_base64" in obj and obj["data_base64"] is not None:
        if obj.get("data") is not None:
            raise InvalidEvent("data and data_base64 are mutually exclusive", field="data_base64")
        try:
            fields["data"] = base64.b64decode(obj["data_base64"], validate=True)
        except (ValueError, TypeError):
            raise InvalidEvent("data_base64 is not valid base64", field="data_base64") from None
    elif "data" in obj:
        fields["data"] = obj["data"]
    if headers:
        fields["headers"] = dict(headers)
    if extensions:
        fields["extensions"] = extensions
    return convert(fields)
