"""What the RabbitMQ sink and the RabbitMQ source connect alike: the URL they dial (password,
heartbeat and client name added), the supervision of the connection, and the part of a
supervised link that watches an aio-pika connection for its loss (`WatchedConnection`)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from typing import Final, Protocol

from aio_pika.abc import AbstractConnection
from yarl import URL

from bridge.sinks.toolkit import Supervision, describe, read_secret

#: Probes in a row that may fail before the connection is replaced (see `Supervision`):
#: a half-open connection never reports itself closed.
MAX_FAILED_PROBES: Final = 3
CLOSE_TIMEOUT_S: Final = 5.0

#: The lines of docs/configuration.md for the fields both configs document alike.
CONNECTION_DOCS: Final[Mapping[str, str]] = {
    "password_env": "Name of an environment variable holding the password; it replaces "
    "any in `url`.",
    "probe_interval_s": "Seconds between background probes while connected.",
    "reconnect_max_s": "Longest pause between reconnection attempts.",
}


class RabbitConnection(Protocol):
    """The connection fields of a RabbitMQ sink's or source's config."""

    @property
    def url(self) -> str: ...
    @property
    def password_env(self) -> str | None: ...
    @property
    def heartbeat_s(self) -> int: ...
    @property
    def connect_timeout_s(self) -> float: ...
    @property
    def health_timeout_s(self) -> float: ...
    @property
    def probe_interval_s(self) -> float: ...
    @property
    def reconnect_max_s(self) -> float: ...


def connection_url(
    config: RabbitConnection, *, key: str, client: str, env: Mapping[str, str] | None = None
) -> URL:
    """The URL to connect to: the password from ``password_env`` (``key`` names that field
    in errors), the heartbeat and the connection's ``client`` name added unless set."""
    url = URL(config.url)
    if config.password_env is not None:
        url = url.with_password(read_secret(config.password_env, key, env))
        if url.user is None:
            url = url.with_user("guest")
    query = dict(url.query)
    query.setdefault("heartbeat", str(config.heartbeat_s))
    query.setdefault("name", client)
    return url.with_query(query)


def supervision(config: RabbitConnection) -> Supervision:
    """The supervisor's knobs from the config's fields."""
    return Supervision.for_broker(
        connect_timeout_s=config.connect_timeout_s,
        health_timeout_s=config.health_timeout_s,
        probe_interval_s=config.probe_interval_s,
        reconnect_max_s=config.reconnect_max_s,
        max_failed_probes=MAX_FAILED_PROBES,
    )


class WatchedConnection:
    """The `Link` methods a supervised RabbitMQ link shares: `lost` resolves once aio-pika
    reports the connection closed (a broker shutdown, a dropped socket, a missed
    heartbeat), `close` closes it within `CLOSE_TIMEOUT_S`. Each link adds its `probe`."""

    def __init__(self, connection: AbstractConnection) -> None:
        self.connection = connection
        self._lost: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        connection.close_callbacks.add(self._on_close)

    def _on_close(self, _sender: object, exc: BaseException | None = None) -> None:
        if not self._lost.done():
            self._lost.set_result(describe(exc) if exc is not None else "closed")

    async def lost(self) -> str:
        return await asyncio.shield(self._lost)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await self.connection.close()
