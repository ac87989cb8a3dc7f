"""Decoding the plain shape (JSON, msgpack, a mapping) into an `Event`, and the
event's ``data`` as bytes for the sinks."""

from __future__ import annotations

import base64
import re
from typing import Any, Final

import msgspec

from bridge.errors import InvalidEvent
from bridge.event.envelope import Event


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
