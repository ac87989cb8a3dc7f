"""A small client for ``evbridge emit``: post one event over the Unix socket or TCP."""

from __future__ import annotations

import os
from typing import Any

import aiohttp

from bridge.config import load_config


class EmitTarget:
    """Where ``evbridge emit`` sends: a Unix socket path or a base URL, plus a token."""

    def __init__(self, *, socket: str | None, url: str | None, token: str | None) -> None:
        self.socket = socket
        self.url = (url or "http://evbridge").rstrip("/")
        self.token = token

    def __str__(self) -> str:
        return f"unix:{self.socket}" if self.socket else self.url

    @classmethod
    def choose(
        cls, socket: str | None, url: str | None, token: str | None, config_path: str | None
    ) -> EmitTarget:
        """``--socket`` or ``--url`` if given; else the config's Unix socket when it
        exists, else its TCP listener. The token: ``--token``, ``$EVBRIDGE_TOKEN``,
        then ``auth.token``."""
        token = token or os.environ.get("EVBRIDGE_TOKEN") or None
        if socket is not None or url is not None:
            return cls(socket=socket, url=url, token=token)
        config = load_config(config_path)
        token = token or config.auth.token
        listen = config.listen
        if listen.unix is not None and (os.path.exists(listen.unix) or listen.tcp is None):
            return cls(socket=listen.unix, url=None, token=token)
        assert listen.tcp is not None
        return cls(socket=None, url=f"http://{listen.tcp}", token=token)


async def post_event(
    target: EmitTarget,
    body: dict[str, Any],
    *,
    timeout: float,  # noqa: ASYNC109 - one bound for connect and answer
) -> tuple[int, Any]:
    """POST one event; (HTTP status, decoded JSON answer)."""
    connector = aiohttp.UnixConnector(path=target.socket) if target.socket else None
    headers = {"Authorization": f"Bearer {target.token}"} if target.token else None
    async with (
        aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=timeout)
        ) as session,
        session.post(f"{target.url}/v1/events", json=body, headers=headers) as response,
    ):
        try:
            answer = await response.json(content_type=None)
        except ValueError:
            answer = {"error": {"code": "bad_answer", "message": await response.text()}}
        return response.status, answer
