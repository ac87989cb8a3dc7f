"""Validation of the envelope's attributes: text attributes, ``dataschema``,
transport headers and CloudEvents extension attributes, with their limits.

Every check raises `InvalidEvent` naming the field (``headers.<name>``,
``extensions.<name>``, ...). `bridge.event.envelope.Event` runs them when an event is
built or decoded.
"""

from __future__ import annotations

import re
from typing import Final

from bridge.errors import InvalidEvent

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
#: A binary-mode binding's attribute (lower case, without its prefix: ``ce-``, ``ce_``,
#: ``cloudEvents:``) -> the `Event` field it sets; the same for HTTP ingest and every
#: source. ``ttl`` is not here: its text is converted (milliseconds).
BINARY_ATTRIBUTES: Final = {
    "id": "id",
    "source": "source",
    "type": "type",
    "specversion": "specversion",
    "time": "time",
    "subject": "subject",
    "dataschema": "dataschema",
    "kind": "kind",
    "partitionkey": "key",
    "correlationid": "correlation_id",
}


def check_text(value: object, field: str, max_len: int, *, required: bool) -> None:
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


_URI_SCHEME: Final = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")


def check_dataschema(value: str) -> None:
    check_text(value, "dataschema", MAX_ATTR_LEN, required=False)
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


def check_extensions(extensions: object) -> None:
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


def check_headers(headers: object) -> None:
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
