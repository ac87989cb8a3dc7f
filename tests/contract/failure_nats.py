"""Failure-contract target for the NATS sink: a private, password-protected nats-server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.sinks.base import RouteOptions, Sink
from bridge.sinks.nats import NatsConfig, NatsRoute, NatsSink, StreamSpec
from tests.brokers import unique_name
from tests.nats_broker import NatsNode

USER = "evb"
PASSWORD_ENV = "EVB_FAILURE_NATS_PASSWORD"
WRONG_ENV = "EVB_FAILURE_NATS_WRONG"


class NatsFailureTarget:
    too_large_bytes = 1024 * 1024  # nats-server's default max_payload
    not_applicable: dict[str, str] = {}  # noqa: RUF012 - never mutated

    def __init__(self, root: Path) -> None:
        password = unique_name("pw")
        self.node = NatsNode(root, user=USER, password=password)
        self.password = password
        self.prefix = unique_name("failure").replace("-", "_")

    async def start_broker(self) -> None:
        await self.node.start()

    def stop_broker(self) -> None:
        self.node.stop()

    def _config(self, password_env: str) -> NatsConfig:
        return NatsConfig(
            name="nats",
            type="nats",
            servers=self.node.url,
            user=USER,
            password_env=password_env,
            create_stream=StreamSpec(name=self.prefix.upper(), subjects=(f"{self.prefix}.>",)),
            connect_timeout_s=2.0,
            confirm_timeout_s=5.0,
            reconnect_max_s=0.2,
            probe_interval_s=0.5,
        )

    def sink(self) -> Sink:
        return NatsSink(self._config(PASSWORD_ENV))

    def refused_sink(self) -> Sink:
        return NatsSink(self._config(WRONG_ENV))

    def route(self) -> RouteOptions:
        return NatsRoute(subject=f"{self.prefix}.events")

    def missing_route(self) -> RouteOptions:
        return NatsRoute(subject=f"no_stream_{self.prefix}.events")


@pytest.fixture
def failure_nats(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[NatsFailureTarget]:
    target = NatsFailureTarget(tmp_path / "nats")
    monkeypatch.setenv(PASSWORD_ENV, target.password)
    monkeypatch.setenv(WRONG_ENV, "not-" + target.password)
    try:
        yield target
    finally:
        target.stop_broker()
