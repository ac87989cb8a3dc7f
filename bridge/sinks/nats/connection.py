"""What the NATS sink and the NATS source configure alike: the servers, the credentials
and the supervision of the connection (the same names, checks and meanings in both)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Final, Protocol

from bridge.sinks.toolkit import Supervision

#: Probes in a row that may fail before the connection is replaced (see `Supervision`).
MAX_FAILED_PROBES: Final = 3
_SERVER: Final = re.compile(r"(nats|tls)://")

#: The lines of docs/configuration.md for these fields.
CONNECTION_DOCS: Final[Mapping[str, str]] = {
    "servers": "Server URLs (`nats://` or `tls://`): one, comma-separated text or a list.",
    "user": "User name (with `password_env`).",
    "password_env": "Name of the environment variable holding the password (with `user`).",
    "token_env": "Name of the environment variable holding an auth token.",
    "creds_file": "Path to a NATS `.creds` file (JWT and NKey seed).",
    "connect_timeout_s": "Bound on one connection attempt.",
    "health_timeout_s": "Bound on a health probe.",
    "probe_interval_s": "Seconds between background probes while connected.",
    "reconnect_max_s": "Longest pause between reconnection attempts.",
}


class NatsConnection(Protocol):
    """The connection fields of a NATS sink's or source's config."""

    @property
    def servers(self) -> str | tuple[str, ...]: ...
    @property
    def user(self) -> str | None: ...
    @property
    def password_env(self) -> str | None: ...
    @property
    def token_env(self) -> str | None: ...
    @property
    def creds_file(self) -> str | None: ...
    @property
    def connect_timeout_s(self) -> float: ...
    @property
    def health_timeout_s(self) -> float: ...
    @property
    def probe_interval_s(self) -> float: ...
    @property
    def reconnect_max_s(self) -> float: ...


def server_list(servers: str | tuple[str, ...]) -> list[str]:
    """The server URLs of ``servers`` (one URL, comma-separated text or a list)."""
    parts = servers.split(",") if isinstance(servers, str) else list(servers)
    return [p.strip() for p in parts if p.strip()]


def check_connection(config: NatsConnection) -> None:
    """Refuse servers that are not NATS URLs and credentials that do not go together
    (a ValueError naming the key, as msgspec's ``__post_init__`` reports it)."""
    servers = server_list(config.servers)
    if not servers:
        raise ValueError("servers: must name at least one nats:// or tls:// URL")
    for url in servers:
        if not _SERVER.match(url):
            raise ValueError(f"servers: {url!r} must start with nats:// or tls://")
    if (config.user is None) != (config.password_env is None):
        raise ValueError("password_env: user and password_env go together")
    given = [k for k in ("password_env", "token_env", "creds_file") if getattr(config, k)]
    if len(given) > 1:
        raise ValueError(f"{given[1]}: set only one of password_env, token_env, creds_file")


def supervision(config: NatsConnection) -> Supervision:
    """The supervisor's knobs from the config's fields."""
    return Supervision.for_broker(
        connect_timeout_s=config.connect_timeout_s,
        health_timeout_s=config.health_timeout_s,
        probe_interval_s=config.probe_interval_s,
        reconnect_max_s=config.reconnect_max_s,
        max_failed_probes=MAX_FAILED_PROBES,
    )
