"""Structured logging: one line per outcome, as text or JSON.

Every line is passed through `bridge.redact.scrub` (no registered secret and
no URL password is ever written), text lines have control characters escaped
(a value a client sent cannot forge a log line), and a line written while a
request is handled carries that request's ``request_id`` (`REQUEST_ID`).

Fields passed with ``extra={...}`` become structured fields: ``key=value``
pairs after the sentence in text format, top-level keys in JSON format::

    2026-11-22T07:25:00.123Z info  bridge.server: listening on tcp 127.0.0.1:8787 listener=tcp
    {"time":"2026-11-22T07:25:00.123Z","level":"info","logger":"bridge.server",
     "message":"listening on tcp 127.0.0.1:8787","listener":"tcp"}

Broker libraries are quiet below ``debug`` (`LibraryFilter`): their records
below WARNING are dropped, their "cannot reach the broker" records (which
repeat every few seconds while a broker is down) are demoted to DEBUG, since
the bridge logs one line per sink state change itself, and any other record
they repeat is written once a minute at most.
"""

from __future__ import annotations

import logging
import sys
import time
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, Final, Literal, TextIO

import msgspec
from aiohttp.http_exceptions import HttpProcessingError

from bridge.redact import scrub, scrub_value

Format = Literal["text", "json"]
LEVELS: Final = ("debug", "info", "warning", "error")

_STANDARD: Final = frozenset(
    logging.LogRecord("", 0, "", 0, "", (), None).__dict__.keys()
    | {"message", "asctime", "taskName"}
)
_encoder: Final = msgspec.json.Encoder(enc_hook=str)

#: The id of the request being handled in this context (set by the server's middleware).
REQUEST_ID: Final[ContextVar[str | None]] = ContextVar("evbridge_request_id", default=None)


def _timestamp(record: logging.LogRecord) -> str:
    moment = datetime.fromtimestamp(record.created, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def fields_of(record: logging.LogRecord) -> dict[str, Any]:
    """The structured fields a record carries (what was passed as ``extra``), plus
    ``request_id`` when the record was written while a request was handled."""
    fields = {
        k: v for k, v in record.__dict__.items() if k not in _STANDARD and not k.startswith("_")
    }
    request_id = REQUEST_ID.get()
    if request_id is not None and "request_id" not in fields:
        fields["request_id"] = request_id
    return fields


def _escape_controls(text: str) -> str:
    """Control characters as escapes (``\\n``, ``\\x1b``): one record, one line."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode() for ch in text)


def _text_value(value: object) -> str:
    text = scrub(value if isinstance(value, str) else _encoder.encode(value).decode())
    if not text or not text.isprintable() or any(ch in text for ch in ' "='):
        return _encoder.encode(text).decode()
    return text


class TextFormatter(logging.Formatter):
    """``<time> <level> <logger>: <message> key=value ...`` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        level = record.levelname.lower()
        message = _escape_controls(scrub(record.getMessage()))
        line = f"{_timestamp(record)} {level:<7} {record.name}: {message}"
        fields = fields_of(record)
        if fields:
            line += " " + " ".join(f"{k}={_text_value(v)}" for k, v in fields.items())
        if record.exc_info:
            line += "\n" + scrub(self.formatException(record.exc_info))
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, fields, exception."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": scrub(record.getMessage()),
        }
        out.update(scrub_value(fields_of(record)))
        if record.exc_info:
            out["exception"] = scrub(self.formatException(record.exc_info))
        return _encoder.encode(out).decode()


class MalformedHttpFilter(logging.Filter):
    """aiohttp logs a malformed request with a traceback at ERROR; make it one INFO line."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            record.msg = "malformed HTTP request answered with %d: %s"
            record.args = (exc.code, exc.message)
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.exc_info = None
            record.exc_text = None
        return True


#: The loggers of the broker (and event loop) libraries, by prefix.
LIBRARY_LOGGERS: Final = ("aiokafka", "aiormq", "aio_pika", "nats", "asyncio")

#: Library records that only say the broker cannot be reached (the bridge's own
#: sink state line says it once): (logger, message template). Pinned against the
#: installed libraries by tests/unit/test_logs.py.
UNREACHABLE: Final = frozenset(
    {
        ("aiokafka", 'Unable connect to "%s:%s": %s'),
        ("aiokafka", "Unable connect to node with id %s: %s"),
        ("aiokafka", "Unable to update metadata from %s"),
        ("aiokafka", 'Unable to request metadata from "%s:%s": %s'),
        ("aiokafka", "Unable to request metadata from node with id %s: %r"),
        ("aiormq.connection", "error when creating transport: %r"),
    }
)

#: Seconds within which a library record with the same template is written once.
REPEAT_S: Final = 60.0
_MAX_TEMPLATES: Final = 1000


def _is_library(name: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in LIBRARY_LOGGERS)


class LibraryFilter(logging.Filter):
    """Broker libraries' records, unless ``debug``: below WARNING dropped, the
    "cannot reach the broker" ones (`UNREACHABLE`) demoted to DEBUG (so dropped),
    and a template already written within `REPEAT_S` seconds held back (the next
    one written carries ``repeated``, how many were)."""

    def __init__(self, debug: bool) -> None:
        super().__init__()
        self.debug = debug
        self._last: dict[tuple[str, str], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if self.debug or not _is_library(record.name):
            return True
        key = (record.name, record.msg if isinstance(record.msg, str) else str(record.msg))
        if key in UNREACHABLE:
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        if record.levelno < logging.WARNING:
            return False
        if len(self._last) > _MAX_TEMPLATES:  # messages built without a template: no growth
            self._last.clear()
        now = time.monotonic()
        last, held = self._last.get(key, (-REPEAT_S, 0))
        if now - last < REPEAT_S:
            self._last[key] = (last, held + 1)
            return False
        self._last[key] = (now, 0)
        if held:
            record.repeated = held
        return True


def setup_logging(
    format: Format = "text", level: str = "info", stream: TextIO | None = None
) -> None:
    """Route every log record to ``stream`` (stderr) in ``format`` at ``level``."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if format == "json" else TextFormatter())
    debug = level.lower() == "debug"
    handler.addFilter(LibraryFilter(debug))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    server_log = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, MalformedHttpFilter) for f in server_log.filters):
        server_log.addFilter(MalformedHttpFilter())
    # evbridge logs one line per outcome itself; aiohttp's access log would double it.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    for name in LIBRARY_LOGGERS:
        # Cheaper than the filter for the common case: below WARNING, not even created.
        logging.getLogger(name).setLevel(logging.NOTSET if debug else logging.WARNING)
