"""Bearer-token auth for the TCP API listener, and the rule that protects it.

With ``auth.token`` (or env ``EVBRIDGE_TOKEN``) set, every request on the TCP
listener must carry ``Authorization: Bearer <token>`` (the
`bridge.server.gate.require_token` middleware); the comparison is
constant-time. The Unix socket relies on its file permissions
(``listen.unix_mode``, ``listen.unix_group``). ``/healthz``, ``/readyz`` and
``/metrics`` stay open, as they are on the metrics listener, so probes and
scrapers need no secret.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Mapping

from bridge.config import Config
from bridge.errors import ConfigError
from bridge.server.errors import ApiError


class BearerAuth:
    """Checks the ``Authorization`` header against one token."""

    __slots__ = ("_expected",)

    def __init__(self, token: str) -> None:
        self._expected = token.encode()

    def check(self, headers: Mapping[str, str]) -> None:
        """Raise `ApiError` 401 unless the headers carry the token."""
        value = headers.get("Authorization")
        if value is None:
            raise _unauthorized("this endpoint needs an Authorization: Bearer <token> header")
        scheme, _, credentials = value.strip().partition(" ")
        if scheme.lower() != "bearer":
            raise _unauthorized("the Authorization header must use the Bearer scheme")
        given = credentials.strip().encode("utf-8", "surrogateescape")
        if not hmac.compare_digest(given, self._expected):
            raise _unauthorized("the bearer token is not valid")


def _unauthorized(message: str) -> ApiError:
    return ApiError(
        401, "unauthorized", message, field="Authorization", headers={"WWW-Authenticate": "Bearer"}
    )


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback IP addresses (127.0.0.0/8, ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(config: Config, tcp_host: str | None) -> None:
    """Refuse a non-loopback TCP API listener that has no token."""
    if tcp_host is not None and not config.auth.token and not is_loopback(tcp_host):
        raise ConfigError(
            f"listen.tcp: {config.listen.tcp!r} is not a loopback address and no token is set; "
            "set auth.token (or EVBRIDGE_TOKEN) to expose the API beyond this host, "
            "or bind to 127.0.0.1",
            field="listen.tcp",
        )
