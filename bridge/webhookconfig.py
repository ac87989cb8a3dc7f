"""``handlers.http[]``: one application endpoint run as a handler, and its load-time checks.

Only loopback hosts and Unix sockets are accepted unless ``allow_remote: true``:
a handler sees every matching event, so sending them off the machine (or pod) must
be a visible, deliberate choice, never a typo in a URL.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from typing import Annotated, ClassVar, Final, Literal
from urllib.parse import urlsplit

import msgspec

from bridge.configparse import check_name
from bridge.errors import ConfigError

PositiveFloat = Annotated[float, msgspec.Meta(gt=0)]
PositiveInt = Annotated[int, msgspec.Meta(gt=0)]

#: Request headers the bridge sets itself: configured ``headers`` may not replace them.
RESERVED_HEADERS: Final = frozenset({"content-type", "content-length", "host", "traceparent"})
#: An HTTP header name (RFC 9110 token).
_TOKEN: Final = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")
_LOOPBACK_NAMES: Final = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


class HttpHandlerConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One endpoint of the application, called for each event matching ``match``.

    ``url`` (``http://127.0.0.1:8080/hooks/invite``) or ``socket`` (the app's Unix
    socket) with ``path``. ``timeout_s`` (default ``handlers.timeout_s``) bounds the
    whole call: waiting for a concurrency slot, connecting, and the full answer.
    ``on_error`` as for ``@on``. ``headers`` are added to every request.
    ``max_response_bytes``: a longer answer is this handler's error.
    ``max_concurrency``: calls in flight to this endpoint at once (the rest wait,
    within their timeout). ``breaker_failures`` consecutive retriable failures open
    the circuit breaker for ``breaker_cooldown_s``: calls then fail at once, and one
    trial call after the cool-down closes it again if it succeeds. ``required``:
    an open breaker makes ``/readyz`` fail (by default it is only reported).
    """

    name: str
    match: str = "*"
    url: str | None = None
    socket: str | None = None
    path: str = "/"
    priority: int = 0
    timeout_s: PositiveFloat | None = None
    on_error: Literal["continue", "stop", "reject"] | None = None
    headers: dict[str, str] = {}
    max_response_bytes: PositiveInt = 1024 * 1024
    max_concurrency: PositiveInt = 16
    breaker_failures: PositiveInt = 5
    breaker_cooldown_s: PositiveFloat = 10.0
    allow_remote: bool = False
    required: bool = False

    field_docs: ClassVar[Mapping[str, str]] = {
        "name": "The handler's name in results, metrics (`handler` label) and logs.",
        "match": "Glob of the event types it is called for, as for `@on`.",
        "url": "`http://` or `https://` URL it is posted to; loopback hosts only unless "
        "`allow_remote`. Exactly one of `url` and `socket`.",
        "socket": "Path of the application's Unix socket it is posted to (with `path`).",
        "path": "Request path on `socket` (with `url`, the path is the URL's).",
        "priority": "Runs among the other handlers by priority, as for `@on`.",
        "timeout_s": "Bounds the whole call (a concurrency slot, connecting, the full "
        "answer); null: `handlers.timeout_s`.",
        "on_error": "`continue`, `stop` or `reject`, as for `@on`; null: the default policy.",
        "headers": "Added to every request (values are secrets: never logged); the "
        "bridge's own headers (`ce-*`, content type) cannot be set.",
        "max_response_bytes": "A longer answer is this handler's error.",
        "max_concurrency": "Calls in flight to this endpoint at once; the rest wait, "
        "within their timeout.",
        "breaker_failures": "Consecutive retriable failures that open the circuit breaker.",
        "breaker_cooldown_s": "How long an open breaker fails calls at once before one trial call.",
        "allow_remote": "Accept a `url` whose host is not loopback.",
        "required": "An open breaker makes `/readyz` fail (otherwise it is only reported).",
    }

    @property
    def target(self) -> str:
        """Where it is sent, for logs and ``/readyz``: the URL, or ``unix:<socket><path>``."""
        return self.url if self.url is not None else f"unix:{self.socket}{self.path}"


def is_loopback_host(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_url(config: HttpHandlerConfig, where: str) -> None:
    url = config.url
    assert url is not None
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            f"{where}.url: must be an http:// or https:// URL with a host (got {url!r})",
            field=f"{where}.url",
        )
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise ConfigError(f"{where}.url: bad port (got {url!r})", field=f"{where}.url") from None
    if not config.allow_remote and not is_loopback_host(parts.hostname):
        raise ConfigError(
            f"{where}.url: {parts.hostname!r} is not a loopback address (got {url!r}); "
            "a handler receives every matching event, so only loopback hosts and Unix "
            f"sockets are accepted unless {where}.allow_remote is true",
            field=f"{where}.url",
        )


def check_http_handlers(handlers: Sequence[HttpHandlerConfig], prefix: str) -> None:
    """What the struct types cannot say: one target each, loopback, unique names, headers.

    Every error is a `ConfigError` naming ``<prefix>[i].<key>`` and the bad value.
    """
    seen: set[str] = set()
    for i, handler in enumerate(handlers):
        where = f"{prefix}[{i}]"
        check_name(handler.name, f"{where}.name")
        if handler.name in seen:
            raise ConfigError(
                f"{where}.name: {handler.name!r} is used twice", field=f"{where}.name"
            )
        seen.add(handler.name)
        if (handler.url is None) == (handler.socket is None):
            raise ConfigError(
                f"{where}: set exactly one of url and socket (got url={handler.url!r}, "
                f"socket={handler.socket!r})",
                field=f"{where}.url",
            )
        if handler.url is not None:
            _check_url(handler, where)
            if handler.path != "/":
                raise ConfigError(
                    f"{where}.path: only with socket; put the path in the url "
                    f"(got {handler.path!r})",
                    field=f"{where}.path",
                )
        elif not handler.socket:
            raise ConfigError(f"{where}.socket: must not be empty", field=f"{where}.socket")
        if not handler.path.startswith("/"):
            raise ConfigError(
                f"{where}.path: must start with '/' (got {handler.path!r})", field=f"{where}.path"
            )
        if not handler.match:
            raise ConfigError(f"{where}.match: must not be empty", field=f"{where}.match")
        for name, value in handler.headers.items():
            lower = name.lower()
            if not _TOKEN.match(name):
                raise ConfigError(
                    f"{where}.headers: {name!r} is not a valid header name",
                    field=f"{where}.headers",
                )
            if lower in RESERVED_HEADERS or lower.startswith("ce-"):
                raise ConfigError(
                    f"{where}.headers: {name!r} is set by the bridge (the event's attributes "
                    "and content type) and cannot be configured",
                    field=f"{where}.headers.{name}",
                )
            if not value.isprintable() or not value.isascii():
                # Shown by name only: a header value is often a credential.
                raise ConfigError(
                    f"{where}.headers.{name}: the value must be printable ASCII "
                    "(no line breaks or control characters)",
                    field=f"{where}.headers.{name}",
                )
