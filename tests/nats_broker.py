"""NATS for tests: the machine's JetStream server, and private servers to stop and restart.

The machine's ``nats-server -js`` on 127.0.0.1:4222 is shared and never
stopped. A test that needs a server to die uses `NatsNode` (its own
``nats-server -js`` on a free port with its own store), stopped by pid.
"""

from __future__ import annotations

import shutil
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client
from nats.js.api import StreamConfig

from tests.brokers import (
    LOCALHOST,
    _BrokerProcess,
    _port_open,
    _unavailable,
    free_port,
    unique_name,
    wait_until,
)

NATS_URL = "nats://127.0.0.1:4222"
NATS_START_TIMEOUT = 15.0


class NatsNode:
    """A private ``nats-server -js`` on ``port``; `stop` and `start` it at will."""

    def __init__(self, root: Path, *, user: str | None = None, password: str | None = None) -> None:
        binary = shutil.which("nats-server")
        if binary is None:
            _unavailable("nats-server is not installed")
        self.port = free_port()
        self.url = f"nats://{LOCALHOST}:{self.port}"
        store = root / "store"
        auth = ["--user", user, "--pass", password or ""] if user is not None else []
        self._process = _BrokerProcess(
            "nats-server",
            [binary, "-js", "-a", LOCALHOST, "-p", str(self.port), "-sd", str(store), *auth],
            root / "nats.log",
            stop_signal=signal.SIGTERM,
            grace=5.0,
        )

    @property
    def running(self) -> bool:
        return self._process.running

    async def start(self) -> None:
        """Start the server and wait until JetStream answers."""
        self._process.spawn()
        try:
            await wait_until(
                lambda: _port_open(LOCALHOST, self.port),
                timeout=NATS_START_TIMEOUT,
                what=f"nats-server to listen on {self.port}",
            )
        except AssertionError as exc:
            raise self._process.start_error(str(exc)) from None

    def stop(self) -> None:
        """SIGTERM by pid (then SIGKILL after the grace period); idempotent."""
        self._process.stop()


async def add_stream(url: str, subjects: list[str], name: str | None = None) -> str:
    """Create a stream capturing ``subjects`` on the server at ``url``; its name."""
    name = name or unique_name("S").replace("-", "_")
    nc = await nats.connect(url)
    try:
        await nc.jetstream().add_stream(StreamConfig(name=name, subjects=subjects))
    finally:
        await nc.close()
    return name


async def delete_stream(url: str, name: str) -> None:
    nc = await nats.connect(url)
    try:
        await nc.jetstream().delete_stream(name)
    finally:
        await nc.close()


@pytest.fixture
async def nats_url() -> str:
    """The machine's NATS JetStream (skipped locally, a failure in CI, if it is away)."""
    if not await _port_open(LOCALHOST, 4222):
        _unavailable(f"no NATS server at {NATS_URL}")
    return NATS_URL


@pytest.fixture
async def nats_client(nats_url: str) -> AsyncIterator[Client]:
    """A test-side connection to the machine's NATS (not the sink's)."""
    nc = await nats.connect(nats_url)
    try:
        yield nc
    finally:
        await nc.close()


@pytest.fixture
def nats_node(tmp_path: Path) -> Iterator[NatsNode]:
    """A private NATS server (not started yet: ``await nats_node.start()``)."""
    node = NatsNode(tmp_path / "nats")
    try:
        yield node
    finally:
        node.stop()


__all__ = [
    "NATS_URL",
    "NatsNode",
    "add_stream",
    "delete_stream",
    "nats_client",
    "nats_node",
    "nats_url",
]
